"""Patch BL: the kernel moves between phases by a plain bilinear resize (the paper's 'Patch BL')."""
from . import register_method
from ._patch import PatchMethod


@register_method
class PatchBilinear(PatchMethod):
    name, kernel_resize = "patch-bl", "bilinear"
    summary = "p x Cp patches; the kernel moves between phases by bilinear resize"
