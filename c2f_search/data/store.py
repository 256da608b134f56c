"""The fbank feature store: an Arrow IPC file per (clips, front end, frame shift, length), written in
record batches while the clips are extracted and read memory-mapped (``extract``); normalization moments
taken one batch at a time (``norm_stats``). A clip set is a ``sets.ClipSet``."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..errors import AudioError, DataError, WriteError
from ..files import atomic_write, remove_stale_temporaries
from .frontend import FrontEnd, fbank, fit_length, load_audio

STORE_VERSION = 1


# fp32 / fp16: the Arrow feature store in that dtype; stream: fbank per batch in worker processes, no store
FEATURE_MODES = ("fp32", "fp16", "stream")


# --------------------------------------------------------------------------- feature store
STORE_CHUNK_BYTES = 32 << 20  # a store is written in record batches of about this size: extraction holds one


class ChunkedRows:
    """An (N, F, T) array held as consecutive chunks (a store's memory-mapped record batches, never
    copied into one): ``rows[idx]`` gathers 1-D row indices like one array would."""

    def __init__(self, chunks: list[np.ndarray]):
        self.chunks = [c for c in chunks if len(c)]
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])
        self.shape = (int(self.starts[-1]),) + self.chunks[0].shape[1:]
        self.dtype = self.chunks[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        return self.take(idx)

    def take(self, idx, out: np.ndarray | None = None) -> np.ndarray:
        """The rows `idx`, gathered into `out` (e.g. a reused pinned buffer) or a new array."""
        idx = np.asarray(idx)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), self.dtype) if out is None else out
        for k, (i, c) in enumerate(zip(idx, which)):
            out[k] = self.chunks[c][i - self.starts[c]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole array, copied into memory (for small data and tests)."""
        return np.concatenate(self.chunks).astype(dtype or self.dtype, copy=False)


@dataclass
class Features:
    """Raw log-mel fbank (N, F, T) cut/zero-padded to T frames, plus the real frame counts."""

    x: ChunkedRows
    n_frames: np.ndarray
    kept: np.ndarray  # indices into the ClipSet
    bad: list[tuple[str, str]]

    def batch(self, idx, out=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, n_frames) for these rows; x in the store's dtype (the device casts fp16 to fp32), gathered
        straight into the array `out(shape, dtype)` gives, where given (a pinned buffer: one copy, not two)."""
        rows = (len(idx), *self.x.shape[1:])
        x = self.x.take(idx, out(rows, self.x.dtype) if out else None)
        return torch.from_numpy(x), torch.from_numpy(self.n_frames[idx].astype(np.int64))

    def batches(self, index_batches, out=None):
        return (self.batch(idx, out) for idx in index_batches)


def clip_fbank(path, fe: FrontEnd, shift_ms: float, target: int) -> tuple[np.ndarray, int]:
    """One clip's raw log-mel fbank (F, target) float32 and its real frame count; AudioError if unusable."""
    fb = fbank(load_audio(path, fe.sample_rate), fe, shift_ms)
    if fb.shape[0] == 0 or not torch.isfinite(fb).all():
        raise AudioError(path, "fbank is empty or not finite (silent or broken clip)")
    fb, n = fit_length(fb, target)
    return fb.T.contiguous().numpy(), n


def _cache_key(clips, fe: FrontEnd, shift: float, target: int, skip_bad: bool, dtype: str) -> str:
    h = hashlib.sha1()
    for p in clips.paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    key = [fe.key(), shift, target, skip_bad, STORE_VERSION] + ([dtype] if dtype != "float32" else [])
    h.update(json.dumps(key).encode())  # float32 stores keep the key they had before fp16 existed
    return h.hexdigest()[:20]


def extract(
    clips,
    fe: FrontEnd,
    shift_ms: float,
    target: int,
    skip_bad: bool = False,
    cache_dir: Path | None = None,
    progress: bool = False,
    dtype: str = "float32",
) -> Features:
    """Fbank for every clip at `shift_ms`, from the Arrow cache when present (memory-mapped);
    `dtype` float16 halves the store."""
    path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        if cache_dir.exists() and not cache_dir.is_dir():
            raise DataError(
                f"feature cache {cache_dir} is a file, not a folder; point $C2F_CACHE at a folder or pass --no-cache"
            )
        path = cache_dir / f"fbank-{_cache_key(clips, fe, shift_ms, target, skip_bad, dtype)}.arrow"
        if path.exists():
            try:
                return _read_store(path, fe.num_mel_bins, target)
            except (pa.ArrowException, OSError, ValueError, KeyError) as e:
                aside = path.with_name(path.name + ".damaged")
                os.replace(path, aside)
                print(
                    f"warning: feature cache {path} cannot be read ({str(e).splitlines()[0][:120]}); "
                    f"moved it to {aside.name} and extracting again",
                    file=sys.stderr,
                )
    bad: list[tuple[str, str]] = []
    chunks = _fbank_chunks(clips, fe, shift_ms, target, skip_bad, progress, dtype, bad)
    if path is None:
        x, n, kept = zip(*chunks)
        return Features(ChunkedRows(list(x)), np.concatenate(n), np.concatenate(kept), bad)
    remove_stale_temporaries(cache_dir)  # stores a killed process was writing
    try:
        _write_store(path, chunks, bad)
    except WriteError as e:
        raise DataError(f"{e} (the feature cache, $C2F_CACHE={cache_dir.parent}), or pass --no-cache") from None
    return _read_store(path, fe.num_mel_bins, target)


def _fbank_chunks(
    clips, fe: FrontEnd, shift_ms: float, target: int, skip_bad: bool, progress: bool, dtype: str, bad: list
):
    """(x (R, F, T), n_frames, kept) for the usable clips in order, R clips (STORE_CHUNK_BYTES) at a time;
    a bad clip raises, or with `skip_bad` is appended to `bad`."""
    rows = max(1, STORE_CHUNK_BYTES // (fe.num_mel_bins * target * np.dtype(dtype).itemsize))
    it = range(len(clips))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"fbank {Path(clips.name).name} @{shift_ms:g}ms", unit="clip", leave=False)
    it, used = iter(it), 0
    while block := list(itertools.islice(it, rows)):
        x = np.empty((len(block), fe.num_mel_bins, target), dtype)
        n, kept = np.empty(len(block), np.int32), np.empty(len(block), np.int64)
        k = 0
        for i in block:
            try:
                x[k], n[k] = clip_fbank(clips.paths[i], fe, shift_ms, target)
            except AudioError as e:
                if not skip_bad:
                    raise _named(e, clips) from None
                bad.append((e.path, e.problem))
                continue
            kept[k] = i
            k += 1
        used += k
        if k:
            yield x[:k], n[:k], kept[:k]
    if not used:
        raise DataError(f"{clips.name}: no usable clips ({len(bad)} bad); the data set is empty")


def _named(e: AudioError, clips) -> DataError:
    return DataError(f"{e} (listed in {clips.name}; pass --skip-bad to skip such clips and list them at the end)")


def _write_store(path: Path, chunks, bad: list[tuple[str, str]]) -> None:
    """Write (x (R, F, T), n_frames, kept) chunks as one record batch each, so memory holds one chunk; then an
    empty batch whose metadata holds what is known only at the end: the clips skipped (`bad`, read once
    `chunks` is spent) and the count. Atomic: readers never see a partial store, and an error mid-write
    (a bad clip, Ctrl-C) removes the temporary file."""

    def write(tmp):
        with pa.OSFile(str(tmp), "wb") as sink:
            writer, n = None, 0
            for x, frames, kept in chunks:
                fb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x[0].size)
                batch = pa.record_batch({"fbank": fb, "n_frames": frames, "index": kept})
                if writer is None:
                    schema = batch.schema.with_metadata({"shape": json.dumps(list(x.shape[1:]))})
                    writer = pa.ipc.new_file(sink, schema)
                writer.write_batch(batch)
                n += len(batch)
            writer.write_batch(batch.slice(0, 0), custom_metadata={"bad": json.dumps(bad), "n": str(n)})
            writer.close()

    atomic_write(path, write)  # readers never see a partial store


def _read_store(path: Path, F: int, T: int) -> Features:
    """A store, memory-mapped (nothing is read until used). A store written before stores were chunked is
    one record batch with the metadata in its schema."""
    r = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    meta = r.schema.metadata or {}
    if b"bad" not in meta:
        meta = r.get_batch_with_custom_metadata(r.num_record_batches - 1)[1]
    t = r.read_all()
    if len(t) != int(meta[b"n"]):
        raise ValueError(f"{len(t)} clips, its metadata says {int(meta[b'n'])}")
    x = [c.values.to_numpy(zero_copy_only=True).reshape(len(c), F, T) for c in t.column("fbank").chunks]
    return Features(
        ChunkedRows(x),
        t.column("n_frames").to_numpy(),
        t.column("index").to_numpy(),
        [tuple(b) for b in json.loads(meta[b"bad"])],
    )


def norm_stats(f: Features) -> tuple[float, float]:
    """Mean and std of the real (unpadded) frames of a training set, one chunk at a time, so a store is never
    read whole: float32 moments per chunk (fp16 stores too), merged in float64 (Chan et al.). A store of one
    chunk (every store written before chunking) gives the values it always gave, which runs resume on."""
    moments = []
    for start, x in zip(f.x.starts, f.x.chunks):
        real = np.arange(x.shape[-1])[None, :] < f.n_frames[start : start + len(x), None]
        vals = x.transpose(0, 2, 1)[real].astype(np.float32, copy=False)
        moments.append((vals.size, vals.mean(), vals.var()))
    count, mean, var = moments[0]
    for c, m, v in moments[1:]:
        d, total = float(m) - float(mean), count + c
        var = (float(var) * count + float(v) * c + d * d * count * c / total) / total
        mean, count = float(mean) + d * c / total, total
    return float(mean), float(np.sqrt(var))
