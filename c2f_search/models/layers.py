"""Small layers and weight moves shared by model families."""

from __future__ import annotations

import torch


def resample_grid_embed(pos: torch.Tensor, new_grid, old_grid, num_prefix_tokens: int) -> torch.Tensor:
    """Bilinear resample of an absolute position embedding on a non-square grid (the paper's choice);
    prefix tokens are kept as they are. timm needs ``old_size`` for non-square grids."""
    from timm.layers import resample_abs_pos_embed

    if tuple(new_grid) == tuple(old_grid):
        return pos
    return resample_abs_pos_embed(
        pos,
        new_size=list(new_grid),
        old_size=list(old_grid),
        num_prefix_tokens=num_prefix_tokens,
        interpolation="bilinear",
        antialias=False,
    )
