"""Patch BL: the kernel moves between phases by a plain bilinear resize (the paper's 'Patch BL')."""

from ._patch import bilinear_resize, stretched
from .base import Capability, Method, register_method


@register_method
class PatchBilinear(Method):
    name, needs = "patch-bl", frozenset({Capability.STRETCHED_PATCH})
    summary = "p x Cp patches; the kernel moves between phases by bilinear resize"

    def geometry(self, C, full):
        return stretched(C, full)

    def resize_kernel(self, w, size):
        return bilinear_resize(w, size)
