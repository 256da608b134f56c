"""Structured patchout over frequency (PaSST): each clip of a training batch keeps 1/C of the frequency
rows of the patch grid, every time column of each."""

import torch

from ._drop import TokenDrop, draw, kept_count, rounding
from .base import register_method


@register_method
class FrequencyPatchout(TokenDrop):
    name = "fpatchout"
    summary = "keep 1/C of the frequency rows of the patch grid (PaSST's structured patchout); evaluation sees all"

    def _kept(self, C, f, t):
        return kept_count(f, C) * t

    def _draw(self, C, f, t, batch, device):
        rows = draw(batch, f, kept_count(f, C), device)  # (B, kf)
        return (rows.unsqueeze(2) * t + torch.arange(t, device=device).view(1, 1, t)).reshape(batch, -1)

    def _rounding(self, C, f, t):
        return rounding("frequency rows", f, C)
