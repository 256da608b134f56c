"""Small layers and weight moves shared by model families."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_patch_kernel(w: torch.Tensor, new_size, how: str) -> torch.Tensor:
    """Move a (D, C_in, p, q) patch kernel to `new_size`.

    ``pi``: FlexiViT's PI-resize (timm's ``resample_patch_embed``) keeps the tokens of a
    correspondingly resized patch. ``bilinear``: a plain bilinear resize of the kernel (the
    paper's 'Patch BL'), which scales tokens by about the size ratio.
    """
    new_size = tuple(int(s) for s in new_size)
    if tuple(w.shape[-2:]) == new_size:
        return w
    if how == "pi":
        from timm.layers import resample_patch_embed
        return resample_patch_embed(w, list(new_size), interpolation="bilinear", antialias=False)
    if how == "bilinear":
        return F.interpolate(w, size=new_size, mode="bilinear", align_corners=False)
    raise ValueError(f"kernel resize must be 'pi' or 'bilinear', got {how!r}")


def resample_grid_embed(pos: torch.Tensor, new_grid, old_grid, num_prefix_tokens: int) -> torch.Tensor:
    """Bilinear resample of an absolute position embedding on a non-square grid (the paper's choice);
    prefix tokens are kept as they are. timm needs ``old_size`` for non-square grids."""
    from timm.layers import resample_abs_pos_embed
    if tuple(new_grid) == tuple(old_grid):
        return pos
    return resample_abs_pos_embed(pos, new_size=list(new_grid), old_size=list(old_grid),
                                  num_prefix_tokens=num_prefix_tokens, interpolation="bilinear", antialias=False)
