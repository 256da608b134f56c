"""Patch PI: the kernel moves between phases by FlexiViT's PI-resize (timm's resample_patch_embed)."""
from . import register_method
from ._patch import PatchMethod


@register_method
class PatchPI(PatchMethod):
    name, kernel_resize = "patch-pi", "pi"
    summary = "p x Cp patches; the kernel moves between phases by PI-resize"
