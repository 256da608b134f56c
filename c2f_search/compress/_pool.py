"""Pooling over time, shared by ``avgpool`` and ``maxpool``: kernel = stride = 1 x C on the raw
fbank, before padding (as the paper's authors' code pools)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import Geometry
from .base import Capability, Method


def pool_time(x: torch.Tensor, n_frames: torch.Tensor, C: int, mode: str) -> torch.Tensor:
    """Pool a zero-padded (B, F, T) raw fbank as if each clip were pooled before padding.

    Padded frames are masked out, so a window that straddles the end of a clip pools only
    its real frames; windows past the end are zero, i.e. padding.
    """
    B, Fm, T = x.shape
    if T % C:
        raise ValueError(f"pooling needs the frame count {T} to be divisible by C={C}")
    real = (torch.arange(T, device=x.device)[None, :] < n_frames.to(x.device)[:, None]).unsqueeze(1)
    if mode == "max":
        y = F.max_pool1d(x.masked_fill(~real, float("-inf")), C, C)
        kept = F.max_pool1d(real.to(x.dtype), C, C) > 0
    elif mode == "avg":
        count = F.avg_pool1d(real.to(x.dtype), C, C) * C
        y = F.avg_pool1d(x * real, C, C) * C / count.clamp(min=1)
        kept = count > 0
    else:
        raise ValueError(f"pool mode must be 'avg' or 'max', got {mode!r}")
    return torch.where(kept, y, torch.zeros((), dtype=x.dtype, device=x.device))


class PoolMethod(Method):
    """Features at the base frame shift, pooled on the device; the model sees T / C frames."""

    mode: str
    needs = frozenset({Capability.SHORTER_INPUT})

    def transform(self, x, n_frames, C):
        return x if C == 1 else pool_time(x, n_frames, C, self.mode)

    def time_mask_scale(self, C):
        return C

    def geometry(self, C, full):
        return Geometry(full.num_mel_bins, full.frames // C)
