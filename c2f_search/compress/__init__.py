"""Temporal compression methods, one module per method (Composer-style).

Every method maps a compression factor C to (a) the input the model sees and
(b) the model geometry (input size, patch size). ``compress`` is the single entry
point used by the training loop.
"""
from __future__ import annotations

import torch

from . import fshift, patch, pool

__all__ = ["compress", "geometry", "needs_frame_shift", "fshift", "pool", "patch"]


def needs_frame_shift(method: str, C: int, base_shift_ms: float) -> float:
    """The fbank frame shift whose features this (method, C) reads."""
    return fshift.frame_shift(base_shift_ms, C) if method == "fshift" else base_shift_ms


def compress(method: str, C: int, x: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
    """Compress a raw (B, F, T) fbank batch read at `needs_frame_shift` resolution.

    fshift features are already compressed at extraction; the patch methods
    compress inside the model; only pooling changes the array here.
    """
    if method in ("avgpool", "maxpool") and C > 1:
        return pool.compress(x, n_frames, C, mode=method[:3])
    return x


def geometry(method: str, C: int, num_mel_bins: int, target_length: int, patch_size: int = 16) -> dict:
    """Model input size and patch size for one phase."""
    if method in ("patch-bl", "patch-pi"):
        return {"input_size": (num_mel_bins, target_length), "patch_size": patch.patch_size(patch_size, C)}
    return {"input_size": (num_mel_bins, target_length // C), "patch_size": (patch_size, patch_size)}
