"""A compression method defined outside the package: keep every C-th frame (decimation)."""

from c2f_search import Geometry, Method, register_method
from c2f_search.geometry import Capability


@register_method
class Decimate(Method):
    name, needs = "toy-decimate", frozenset({Capability.SHORTER_INPUT})
    summary = "every C-th frame of the raw fbank"

    def transform(self, x, n_frames, C):
        return x[..., ::C]

    def time_mask_scale(self, C):
        return C

    def geometry(self, C, full):
        return Geometry(full.num_mel_bins, full.frames // C)
