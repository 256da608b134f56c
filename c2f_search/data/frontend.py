"""AST's front end: audio decoding, Kaldi fbank, length fitting, normalization, SpecAugment."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from ..errors import AudioError, ConfigError

# Known dataset statistics (AST recipes), selectable by name with --norm.
DATASET_STATS = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
    "vggsound": (-5.0767093, 4.4533687),
    "voxceleb": (-3.7614744, 4.2011642),
}


@dataclass(frozen=True)
class FrontEnd:
    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    target_length: int = 1024

    def key(self) -> dict:
        return asdict(self)


def load_audio(path, sample_rate: int) -> torch.Tensor:
    """Decode with soundfile, mix to mono, resample; returns (1, L) float32."""
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found; fix the 'wav' path in the datafile")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt or truncated files
        raise AudioError(path, f"cannot decode audio ({e}); re-encode it as WAV or FLAC or drop it") from None
    if data.shape[0] == 0:
        raise AudioError(path, "zero-length clip")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")
    wav = torch.from_numpy(data.mean(axis=1, keepdims=True).T.copy())
    if sr != sample_rate:
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav


def fbank(wav: torch.Tensor, fe: FrontEnd, frame_shift_ms: float | None = None) -> torch.Tensor:
    """Log-mel fbank (frames, mel) with AST's parameters, on the mean-subtracted waveform."""
    shift = fe.frame_shift_ms if frame_shift_ms is None else frame_shift_ms
    wav = wav - wav.mean()
    need = int(fe.sample_rate * fe.frame_length_ms / 1000)
    if wav.shape[-1] < need:  # shorter than one window: pad so Kaldi yields one frame
        wav = torch.nn.functional.pad(wav, (0, need - wav.shape[-1]))
    return torchaudio.compliance.kaldi.fbank(
        wav,
        htk_compat=True,
        sample_frequency=fe.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=fe.num_mel_bins,
        dither=0.0,
        frame_shift=shift,
        frame_length=fe.frame_length_ms,
    )


def fit_length(x: torch.Tensor, target: int) -> tuple[torch.Tensor, int]:
    """Cut or zero-pad (frames, mel) to `target` frames; returns it and the real frame count."""
    n = x.shape[0]
    if n >= target:
        return x[:target], target
    return torch.nn.functional.pad(x, (0, 0, 0, target - n)), n


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x - mean) / (2 * std)


def spec_augment(x: torch.Tensor, freqm: int, timem: int) -> torch.Tensor:
    """SpecAugment on a (B, F, T) batch, masks drawn per example."""
    if freqm <= 0 and timem <= 0:
        return x
    x = x.unsqueeze(1)
    if freqm > 0:
        x = torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True)(x)
    if timem > 0:
        x = torchaudio.transforms.TimeMasking(min(timem, x.shape[-1]), iid_masks=True)(x)
    return x.squeeze(1)


def add_noise(x: torch.Tensor, time_scale: int = 1) -> torch.Tensor:
    """AST's noise augmentation on a normalized (B, F, T) batch: uniform noise of a random level up to 0.1
    and a random roll in time of -10..9 frames at full resolution (divided by the phase's time scale)."""
    B = x.shape[0]
    x = x + torch.rand_like(x) * torch.rand(B, 1, 1, device=x.device) / 10
    # drawn on the device: a host draw would be copied from pageable memory, blocking the host every step
    shifts = torch.randint(-10, 10, (B,), device=x.device).div(time_scale, rounding_mode="floor")
    T = x.shape[-1]  # torch.roll of each clip by its own shift, as one gather
    idx = (torch.arange(T, device=x.device) - shifts[:, None]) % T
    return x.gather(-1, idx[:, None].expand_as(x))


def parse_norm(text):
    """``--norm``: auto (None: computed from the training set), a data set's name, or MEAN,STD."""
    if text is None or text == "auto":
        return None
    if text.lower() in DATASET_STATS:
        return DATASET_STATS[text.lower()]
    try:
        mean, std = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError("norm", f"{text!r}: use auto, one of {', '.join(DATASET_STATS)}, or MEAN,STD") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ConfigError("norm", f"{text!r}: MEAN must be finite and STD > 0")
    return mean, std
