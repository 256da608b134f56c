"""Max pool: 1 x C max pooling over time."""

from ._pool import PoolMethod
from .base import register_method


@register_method
class MaxPool(PoolMethod):
    name, mode = "maxpool", "max"
    summary = "1xC max pooling over time on the raw fbank, before padding"
