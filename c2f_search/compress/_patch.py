"""Patch: p x Cp patches over the full-resolution input; the model family stretches its patch
(and stride) along time by C, and the method says how the kernel moves between phases: the pure
kernel resizes here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import Geometry


def pi_resize(w: torch.Tensor, size) -> torch.Tensor:
    """FlexiViT's PI-resize (timm's ``resample_patch_embed``): keeps the tokens of a correspondingly
    resized patch. A kernel already of `size` is returned as it is."""
    size = [int(s) for s in size]
    if list(w.shape[-2:]) == size:
        return w
    from timm.layers import resample_patch_embed

    return resample_patch_embed(w, size, interpolation="bilinear", antialias=False)


def bilinear_resize(w: torch.Tensor, size) -> torch.Tensor:
    """A plain bilinear resize of the kernel (the paper's 'Patch BL'): tokens scale by about the size ratio."""
    size = tuple(int(s) for s in size)
    if tuple(w.shape[-2:]) == size:
        return w
    return F.interpolate(w, size=size, mode="bilinear", align_corners=False)


def stretched(C: int, full: Geometry) -> Geometry:
    """The full-resolution input, its patches C times wider along time."""
    return Geometry(full.num_mel_bins, full.frames, C)
