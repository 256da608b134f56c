"""Patch: p x Cp patches; the kernel moves between phases by bilinear resize (BL) or PI-resize (PI)."""
import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed


def patch_size(p: int, C: int) -> tuple[int, int]:
    return (p, p * C)


def resize_kernel(w: torch.Tensor, new_size: tuple[int, int], how: str) -> torch.Tensor:
    """Move a (D, 1, p, q) patch kernel to `new_size`.

    PI-resize (FlexiViT) keeps tokens of a correspondingly resized patch; BL is a
    plain bilinear resize of the kernel, as in the paper's 'Patch BL'.
    """
    if tuple(w.shape[-2:]) == tuple(new_size):
        return w
    if how == "pi":
        return resample_patch_embed(w, list(new_size), interpolation="bilinear", antialias=False)
    if how == "bl":
        return F.interpolate(w, size=tuple(new_size), mode="bilinear", align_corners=False)
    raise ValueError(f"kernel transfer must be 'pi' or 'bl', got {how!r}")
