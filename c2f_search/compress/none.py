"""The baseline: no compression, one phase at full resolution."""

from .base import Method, register_method


@register_method
class NoCompression(Method):
    name, compresses = "none", False
    summary = "baseline, one phase none:1xE"

    def geometry(self, C, full):
        return full
