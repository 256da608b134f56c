"""Fshift: the fbank frame shift times C. Only the shift is scaled, the 25 ms window stays, and the
target length and SpecAugment's time mask are divided by C (the paper's authors' code)."""

from ..geometry import Geometry
from .base import Capability, Method, register_method


def frame_shift(base_shift_ms: float, C: int) -> float:
    return base_shift_ms * C


@register_method
class FrameShift(Method):
    name, needs = "fshift", frozenset({Capability.SHORTER_INPUT})
    summary = "fbank frame shift x C (25 ms window kept); target length and time mask / C"

    def frame_shift(self, base_shift_ms, C):
        return frame_shift(base_shift_ms, C)

    def feature_length(self, target_length, C):
        return target_length // C

    def time_mask_scale(self, C):
        return C

    def geometry(self, C, full):
        return Geometry(full.num_mel_bins, full.frames // C)
