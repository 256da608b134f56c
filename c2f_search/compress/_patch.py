"""Patch: p x Cp patches over the full-resolution input; the model family stretches its patch
(and stride) along time by C, and moves the kernel between phases as the method says."""
from . import Method
from ..geometry import Geometry


class PatchMethod(Method):
    def geometry(self, C, full):
        return Geometry(full.num_mel_bins, full.frames, C)
