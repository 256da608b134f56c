"""``builtin:events``: a procedural acoustic-event data set, generated deterministically by seed.

Ten classes of 1-2 s events (harmonic stacks, chirps, AM tones, noise bursts, click
trains, ...) with random onset, duration, pitch and SNR over coloured background
noise. Events last hundreds of milliseconds and change smoothly, so the data keep
the temporal redundancy of real audio. Written as WAV plus AST-style JSON
datafiles and class_labels_indices.csv, so it goes through the same loader as user data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import DataError
from ..files import cache_root, write_problem

SR = 16000
VERSION = 5
CLASSES = [
    "harmonic_stack",
    "up_chirp",
    "down_chirp",
    "am_tone",
    "noise_burst",
    "click_train",
    "vibrato_tone",
    "beeps",
    "impacts",
    "two_tone_siren",
]
DEFAULTS = {"train": 2000, "val": 400, "seed": 0}
# Front end for this data set: 64 mel bins, 256 frames (2.56 s) so C in {2, 4, 8} divides the 16 time tokens.
FRONTEND = {"num_mel_bins": 64, "target_length": 256}


def _tone(f, t):
    return np.sin(2 * np.pi * np.cumsum(np.broadcast_to(f, t.shape)) / SR)


def _event(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    f0 = rng.uniform(300, 900)
    if k == 0:
        h = rng.integers(4, 9)
        y = sum(_tone(f0 * i, t) / i for i in range(1, h + 1))
    elif k in (1, 2):
        f1, f2 = f0, f0 * rng.uniform(2.5, 5)
        f = f1 * (f2 / f1) ** (t / t[-1])
        y = _tone(f if k == 1 else f[::-1], t)
    elif k == 3:
        y = _tone(f0 * 2, t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))
    elif k == 4:
        spec = np.fft.rfft(rng.standard_normal(n))
        fr = np.fft.rfftfreq(n, 1 / SR)
        c = rng.uniform(800, 5000)
        spec *= np.exp(-0.5 * ((fr - c) / (0.15 * c)) ** 2)
        y = np.fft.irfft(spec, n)
    elif k == 5:
        y = np.zeros(n)
        period = int(SR / rng.uniform(8, 30))
        y[::period] = 1.0
        y = np.convolve(y, np.hanning(24), mode="same")
    elif k == 6:
        f = f0 * (1 + rng.uniform(0.03, 0.08) * np.sin(2 * np.pi * rng.uniform(4, 8) * t))
        y = _tone(f, t)
    elif k == 7:
        gate = (np.sin(2 * np.pi * rng.uniform(3, 7) * t) > 0.3).astype(float)
        y = _tone(f0 * 1.5, t) * np.convolve(gate, np.hanning(80) / 40, mode="same")
    elif k == 8:
        y = np.zeros(n)
        for _ in range(rng.integers(2, 5)):
            s = rng.integers(0, max(1, n - SR // 10))
            m = n - s
            tt = np.arange(m) / SR
            y[s:] += np.exp(-tt / rng.uniform(0.02, 0.06)) * np.sin(2 * np.pi * rng.uniform(150, 900) * tt)
    else:
        rate, f1, f2 = rng.uniform(2, 4), f0, f0 * rng.uniform(1.3, 1.6)
        f = np.where(np.sin(2 * np.pi * rate * t) > 0, f1, f2)
        y = _tone(np.convolve(f, np.ones(160) / 160, mode="same"), t)
    fade = min(n // 4, 160)
    env = np.ones(n)
    env[:fade], env[n - fade :] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
    return y * env / (np.abs(y).max() + 1e-9)


def make_clip(k: int, rng: np.random.Generator) -> np.ndarray:
    dur = rng.uniform(1.0, 2.0)
    n = int(dur * SR)
    ev_n = int(rng.uniform(0.6, 1.0) * n)
    onset = rng.integers(0, n - ev_n + 1)
    noise = np.convolve(rng.standard_normal(n), [1.0, 0.9], mode="same")  # slightly coloured background
    noise /= noise.std() + 1e-9
    ev = _event(k, ev_n, rng)
    snr_db = rng.uniform(10, 25)
    ev *= np.sqrt(10 ** (snr_db / 10)) / (ev.std() + 1e-9)
    y = noise * 0.05
    y[onset : onset + ev_n] += ev * 0.05
    return (y / (np.abs(y).max() + 1e-9) * 0.9).astype(np.float32)


def parse_spec(spec: str) -> dict:
    """``builtin:events`` or ``builtin:events?train=300&val=100&seed=1``."""
    name, _, query = spec.partition("?")
    if name != "builtin:events":
        raise DataError(f"unknown built-in data set {name!r}; the built-in one is 'builtin:events'")
    opts = dict(DEFAULTS)
    for kv in filter(None, query.split("&")):
        k, _, v = kv.partition("=")
        if k not in DEFAULTS or not v.isdigit():
            raise DataError(f"{spec!r}: option {kv!r} is not one of train=N, val=N, seed=N")
        opts[k] = int(v)
    if opts["train"] < 10 or opts["val"] < 10:
        raise DataError(f"{spec!r}: train and val need at least 10 clips each")
    return opts


def _generate(tmp: Path, root: Path, o: dict) -> None:
    """Write the data set into the new folder `tmp`; its datafiles name the clips at `root`."""
    with open(tmp / "class_labels_indices.csv", "w") as f:
        f.write("index,mid,display_name\n")
        for i, c in enumerate(CLASSES):
            f.write(f"{i},/builtin/{c},{c}\n")
    for split_id, split in enumerate(("train", "val")):
        (tmp / split).mkdir()
        entries = []
        for i in range(o[split]):
            rng = np.random.default_rng([o["seed"], split_id, i])
            k = i % len(CLASSES)
            wav = tmp / split / f"{split}_{i:05d}_{CLASSES[k]}.wav"
            sf.write(str(wav), make_clip(k, rng), SR, subtype="PCM_16")
            entries.append({"wav": str(root / split / wav.name), "labels": f"/builtin/{CLASSES[k]}"})
        (tmp / f"{split}.json").write_text(json.dumps({"data": entries}))


def materialize(spec: str = "builtin:events") -> Path:
    """Generate the data set once into the cache (atomically) and return its folder."""
    o = parse_spec(spec)
    root = cache_root() / "builtin" / f"events-v{VERSION}-s{o['seed']}-tr{o['train']}-va{o['val']}"
    if (root / "class_labels_indices.csv").exists():
        return root
    from ..files import remove_stale_temporaries, temp_prefix

    tmp = None
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root.parent)  # what a killed generator left
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=temp_prefix()))
        _generate(tmp, root, o)
    except BaseException as e:  # soundfile's errors are not OSErrors; an interrupt leaves nothing either
        # before the partial folder goes (it holds the space); soundfile reports a failed write as its own error
        problem = write_problem(e, root) if isinstance(e, Exception) else None
        if problem is None and isinstance(e, sf.SoundFileRuntimeError):
            problem = str(e), "free space there"
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if problem is None:
            raise
        raise DataError(
            f"C2F_CACHE={cache_root()}: cannot write {spec} into {root.parent} ({problem[0]}); "
            f"builtin:events generates its "
            f"clips in the cache: {problem[1]}, or point $C2F_CACHE at another folder"
        ) from None
    try:
        os.replace(tmp, root)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return root
