"""The input geometry of one phase, and the capabilities a compression method asks of a model family."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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


class Capability(str, Enum):
    """What a compression method needs from a model family, and what a family provides."""

    SHORTER_INPUT = "a shorter time axis (a new token grid)"
    STRETCHED_PATCH = "a patch kernel stretched along time"
    TOKEN_DROP = "dropping tokens after the position embedding"
