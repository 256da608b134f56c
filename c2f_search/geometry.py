"""The input geometry of one phase: what a compression method asks of a model family."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """Mel bins and frames the model sees, and how many times wider its patches are along time.

    Fshift and pooling shorten the input (``frames = T / C``); the patch methods keep it and
    stretch the patch (``time_stretch = C``). A model family turns this into its own layers.
    """
    num_mel_bins: int
    frames: int
    time_stretch: int = 1

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.num_mel_bins, self.frames)

    def as_dict(self) -> dict:
        return {"num_mel_bins": self.num_mel_bins, "frames": self.frames, "time_stretch": self.time_stretch}
