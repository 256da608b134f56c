"""Bytes per clip and clips/s per CPU core for each feature mode (fp32 store, fp16 store, stream), so
that a user can size a node: 10 s clips, 16 kHz mono FLAC, 128 mel x 1024 frames at 10 ms.

* store modes: the one-time extraction (decode + fbank + write) and the training-time read (a batch
  gathered from the memory-mapped store, as the prefetch thread does), each on one thread;
* stream: decode + fbank per batch in worker processes, with 1 and 2 workers.
The clips are synthetic (noise and tones), so FLAC compresses them less than speech or music.
Usage: python bench/feature_modes.py [--clips 256] [--seconds 10]
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from c2f_search.data.sets import Data


def make_clips(d: Path, n: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    entries = []
    for i in range(n):
        y = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
        sf.write(str(d / f"{i}.flac"), y.astype("float32"), 16000, subtype="PCM_16")
        entries.append({"wav": str(d / f"{i}.flac"), "labels": "/m/a"})
    (d / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,a\n")
    (d / "train.json").write_text(json.dumps({"data": entries}))
    return d / "train.json"


def read_rate(feats, n, B=16, epochs=1):
    order = [np.random.default_rng(k).permutation(n)[:B] for k in range(max(1, epochs * n // B))]
    t = time.perf_counter()
    for _ in feats.batches(order):
        pass
    return len(order) * B / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=256, help="enough that a store outgrows the CPU caches")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    torch.set_num_threads(1)  # per core
    T = 1024
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        spec = make_clips(d, a.clips, a.seconds)
        audio = sum(f.stat().st_size for f in d.glob("*.flac")) / a.clips
        Data.from_specs(str(spec), cache_dir=None, num_mel_bins=128, target_length=T, norm=(0.0, 1.0)).features(
            "train", 10.0, T
        )  # warm-up: imports, page cache
        for mode in ("fp32", "fp16"):
            data = Data.from_specs(
                str(spec), features=mode, cache_dir=d / mode, num_mel_bins=128, target_length=T, norm=(0.0, 1.0)
            )
            t = time.perf_counter()
            feats = data.features("train", 10.0, T)
            extract = a.clips / (time.perf_counter() - t)
            size = sum(f.stat().st_size for f in (d / mode).glob("*.arrow")) / a.clips
            read_rate(feats, a.clips)  # page cache warm, as in a training epoch after the first
            rows.append(
                (f"{mode} store", size, audio, f"{extract:.0f} (once)", f"{read_rate(feats, a.clips, epochs=20):.0f}")
            )
        for workers in (1, 2):
            data = Data.from_specs(
                str(spec), features="stream", workers=workers, num_mel_bins=128, target_length=T, norm=(0.0, 1.0)
            )
            feats = data.features("train", 10.0, T)
            read_rate(feats, 16)  # workers warm
            rate = read_rate(feats, a.clips)
            rows.append(
                (
                    f"stream, {workers} worker{'s' * (workers > 1)}",
                    0,
                    audio,
                    "none",
                    f"{rate:.0f} ({rate / workers:.0f} per worker)",
                )
            )
            data._executor.shutdown()
    cpu = platform.processor() or platform.machine()
    print(
        f"{a.clips} clips of {a.seconds:g} s, 16 kHz mono FLAC (PCM_16), 128 mel x {T} frames at 10 ms; "
        f"{os.cpu_count()} CPU cores ({cpu}), one torch thread per process.\n"
    )
    print(
        "| mode | store bytes per clip (per frame shift) | audio bytes per clip | extraction clips/s per core | "
        "training-time clips/s per core |"
    )
    print("|---|---|---|---|---|")
    for mode, size, audio_b, ext, rate in rows:
        print(f"| {mode} | {size / 1024:.0f} KiB | {audio_b / 1024:.0f} KiB | {ext} | {rate} |")


if __name__ == "__main__":
    main()
