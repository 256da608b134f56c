"""Features without a store (``--features stream``): each batch's fbank is computed from the audio by
worker processes, in order; only the clip headers are read up front (``scan_clips``)."""

from __future__ import annotations

import itertools
import os
from collections import deque
from pathlib import Path

import numpy as np
import torch

from ..errors import AudioError, DataError
from .frontend import FrontEnd
from .store import _named, clip_fbank


# --------------------------------------------------------------------------- streaming (no store)
def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker_init() -> None:
    torch.set_num_threads(1)  # one clip at a time per process: the processes are the parallelism


def _batch_job(paths: list[str], fe_key: dict, shift_ms: float, target: int):
    """In a worker process: (x (B, F, T) float32, n_frames, [(path, problem)] of clips that failed)."""
    fe = FrontEnd(**fe_key)
    xs, ns, bad = [], [], []
    for p in paths:
        try:
            fb, n = clip_fbank(p, fe, shift_ms, target)
        except AudioError as e:
            bad.append((e.path, e.problem))
            fb, n = np.zeros((fe.num_mel_bins, target), np.float32), 0
        xs.append(fb)
        ns.append(n)
    return np.stack(xs), np.array(ns, np.int64), bad


def scan_clips(clips, skip_bad: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The clips whose header reads (no decoding): what a streamed data set trains on."""
    import soundfile as sf

    kept, bad = [], []
    for i, p in enumerate(clips.paths):
        try:
            if sf.info(p).frames <= 0:
                raise AudioError(p, "zero-length clip")
        except AudioError as e:
            problem = e
        except Exception as e:  # noqa: BLE001 - soundfile raises several types
            problem = AudioError(p, "file not found" if not Path(p).exists() else f"cannot read its header ({e})")
        else:
            kept.append(i)
            continue
        if not skip_bad:
            raise _named(problem, clips)
        bad.append((problem.path, problem.problem))
    if not kept:
        raise DataError(f"{clips.name}: no usable clips ({len(bad)} bad); the data set is empty")
    return np.array(kept, np.int64), bad


class StreamFeatures:
    """Features computed per batch from the audio by worker processes, in order; nothing is stored.
    Same interface as ``Features`` for training (``kept``, ``bad``, ``batch``, ``batches``)."""

    def __init__(self, clips, fe: FrontEnd, shift_ms: float, target: int, kept, bad, pool, workers: int):
        self.clips, self.fe, self.shift_ms, self.target = clips, fe, shift_ms, target
        self.kept, self.bad, self._pool, self.workers = kept, bad, pool, workers

    def _submit(self, idx):
        paths = [self.clips.paths[k] for k in self.kept[np.asarray(idx)]]
        return self._pool().submit(_batch_job, paths, self.fe.key(), self.shift_ms, self.target)

    def batches(self, index_batches, out=None):
        """2 batches per worker in flight, so every worker is busy while the consumer takes one; each copied
        into the array `out(shape, dtype)` gives, where given."""
        it = iter(index_batches)
        pending = deque(self._submit(idx) for idx in itertools.islice(it, 2 * self.workers))
        try:
            while pending:
                x, n, bad = pending.popleft().result()
                if bad:
                    raise DataError(
                        f"{bad[0][0]}: {bad[0][1]} (listed in {self.clips.name}; streaming decodes "
                        f"clips only when they are trained on: drop it from the data set, or use a "
                        f"feature store, whose --skip-bad skips it up front)"
                    )
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(self._submit(nxt))
                if out:
                    buf = out(x.shape, x.dtype)
                    np.copyto(buf, x)
                    x = buf
                yield torch.from_numpy(x), torch.from_numpy(n)
        finally:
            for f in pending:
                f.cancel()

    def batch(self, idx):
        return next(iter(self.batches([idx])))
