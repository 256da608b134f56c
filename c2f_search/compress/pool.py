"""Avg/Max pool: kernel = stride = 1xC over time, on the raw fbank before padding."""
import torch
import torch.nn.functional as F


def compress(x: torch.Tensor, n_frames: torch.Tensor, C: int, mode: str = "avg") -> torch.Tensor:
    """Pool a zero-padded (B, F, T) raw fbank as if each clip were pooled before padding.

    Padded frames are masked out, so a window that straddles the end of a clip
    pools only its real frames; windows past the end are zero, i.e. padding.
    """
    B, Fm, T = x.shape
    if T % C:
        raise ValueError(f"pooling needs the frame count {T} to be divisible by C={C}")
    real = (torch.arange(T, device=x.device)[None, :] < n_frames.to(x.device)[:, None]).unsqueeze(1)
    if mode == "max":
        y = F.max_pool1d(x.masked_fill(~real, float("-inf")), C, C)
    elif mode == "avg":
        count = F.avg_pool1d(real.float(), C, C) * C
        y = F.avg_pool1d(x * real, C, C) * C / count.clamp(min=1)
    else:
        raise ValueError(f"pool mode must be 'avg' or 'max', got {mode!r}")
    kept = count > 0 if mode == "avg" else F.max_pool1d(real.float(), C, C) > 0
    return torch.where(kept, y, torch.zeros((), dtype=x.dtype, device=x.device))
