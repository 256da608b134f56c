"""Avg pool: 1 x C average pooling over time."""

from ._pool import PoolMethod
from .base import register_method


@register_method
class AvgPool(PoolMethod):
    name, mode = "avgpool", "avg"
    summary = "1xC average pooling over time on the raw fbank, before padding"
