"""Patch PI: the kernel moves between phases by FlexiViT's PI-resize (timm's resample_patch_embed)."""

from ._patch import stretched
from .base import Capability, Method, register_method


@register_method
class PatchPI(Method):
    name, needs = "patch-pi", frozenset({Capability.STRETCHED_PATCH})
    summary = "p x Cp patches; the kernel moves between phases by PI-resize"

    def geometry(self, C, full):
        return stretched(C, full)
