"""Max pool: 1 x C max pooling over time."""
from .base import register_method
from ._pool import PoolMethod


@register_method
class MaxPool(PoolMethod):
    name, mode = "maxpool", "max"
    summary = "1xC max pooling over time on the raw fbank, before padding"
