"""Unstructured patchout (PaSST): each clip of a training batch keeps 1/C of the patches, at random."""

from ._drop import TokenDrop, draw, kept_count, rounding
from .base import register_method


@register_method
class RandomPatchout(TokenDrop):
    name = "patchout"
    summary = "keep 1/C of the patches at random (PaSST's unstructured patchout); evaluation sees all"

    def _kept(self, C, f, t):
        return kept_count(f * t, C)

    def _draw(self, C, f, t, batch, device):
        return draw(batch, f * t, kept_count(f * t, C), device)

    def _rounding(self, C, f, t):
        return rounding("patches", f * t, C)
