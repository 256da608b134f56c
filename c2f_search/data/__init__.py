"""Data: data sets and their splits (``sets``), the fbank front end (``frontend``), the feature store
(``store``) or streamed features (``stream``), the built-in data set (``builtin_events``) and the prefetching
loader (``prefetch``)."""

from .sets import Data

__all__ = ["Data"]
