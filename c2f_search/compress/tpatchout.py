"""Structured patchout over time (PaSST): each clip of a training batch keeps 1/C of the time columns of
the patch grid, every frequency row of each."""

import torch

from ._drop import TokenDrop, draw, kept_count, rounding
from .base import register_method


@register_method
class TimePatchout(TokenDrop):
    name = "tpatchout"
    summary = "keep 1/C of the time columns of the patch grid (PaSST's structured patchout); evaluation sees all"

    def _kept(self, C, f, t):
        return f * kept_count(t, C)

    def _draw(self, C, f, t, batch, device):
        cols = draw(batch, t, kept_count(t, C), device)  # (B, kt)
        rows = torch.arange(f, device=device).view(1, f, 1) * t
        return (rows + cols.unsqueeze(1)).reshape(batch, -1)

    def _rounding(self, C, f, t):
        return rounding("time columns", t, C)
