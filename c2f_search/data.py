"""Data sets (AST JSON datafiles, class folders, builtin:events) and the fbank feature store."""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from . import builtin
from .errors import AudioError, DataError, WriteError
from .frontend import FrontEnd, fbank, fit_length, load_audio
from .io import atomic_write, read_text, remove_stale_temporaries

AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
STORE_VERSION = 1
# fp32 / fp16: the Arrow feature store in that dtype; stream: fbank per batch in worker processes, no store
FEATURE_MODES = ("fp32", "fp16", "stream")
NORM_SAMPLE = 256  # clips a streamed data set estimates its normalization from


@dataclass
class ClipSet:
    name: str
    paths: list[str]
    targets: torch.Tensor  # (N, K) multi-hot float
    classes: list[str]
    multilabel: bool
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, problem) skipped with --skip-bad

    def __len__(self) -> int:
        return len(self.paths)


def read_labels_csv(path) -> tuple[list[str], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class labels file not found; pass --labels class_labels_indices.csv")
    reader = csv.DictReader(io.StringIO(read_text(path, DataError), newline=""))
    rows = [(reader.line_num, r) for r in reader]
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0][1]):
        raise DataError(f"{path}: needs the header 'index,mid,display_name' and one row per class")
    first: dict[str, int] = {}
    for line, r in rows:
        try:
            r["index"] = int(r["index"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {line}: index {r['index']!r} is not an integer") from None
        if r["mid"] in first:
            raise DataError(f"{path}: line {line}: mid {r['mid']!r} is already the class on line {first[r['mid']]}; "
                            f"each class needs its own mid") from None
        first[r["mid"]] = line
    rows = sorted((r for _, r in rows), key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(len(rows))):
        raise DataError(f"{path}: the index column must run 0..{len(rows) - 1} without gaps")
    return [r["mid"] for r in rows], [r["display_name"] for r in rows]


def load_datafile(path, labels_csv, task: str = "auto", skip_bad: bool = False) -> ClipSet:
    """AST datafile ``{"data": [{"wav": ..., "labels": "mid1,mid2"}]}`` with class_labels_indices.csv."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: datafile not found")
    if labels_csv is None:
        cand = path.parent / "class_labels_indices.csv"
        if not cand.is_file():
            raise DataError(f"{path}: pass --labels class_labels_indices.csv (none found beside the datafile)")
        labels_csv = cand
    mids, names = read_labels_csv(labels_csv)
    index = {m: i for i, m in enumerate(mids)}
    try:
        doc = json.loads(read_text(path, DataError))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f'{path}: expected {{"data": [{{"wav": ..., "labels": "mid1,mid2"}}, ...]}}')
    paths, rows, bad = [], [], []
    for i, e in enumerate(doc["data"]):
        if not isinstance(e, dict) or "wav" not in e or "labels" not in e:
            raise DataError(f"{path}: entry {i} needs the fields 'wav' and 'labels'")
        lab = [m.strip() for m in str(e["labels"]).split(",") if m.strip()]
        missing = [m for m in lab if m not in index]
        if missing or not lab:
            problem = (f"label {missing[0]!r} is not in {labels_csv}; add it there or fix the entry"
                       if missing else "empty 'labels'")
            if not skip_bad:
                raise DataError(f"{path}: entry {i} ({e['wav']}): {problem} (or pass --skip-bad)")
            bad.append((str(e["wav"]), problem))
            continue
        wav = Path(e["wav"])
        paths.append(str(wav if wav.is_absolute() else path.parent / wav))
        rows.append([index[m] for m in lab])
    if not paths:
        raise DataError(f"{path}: the data set is empty; it needs at least one usable clip")
    targets = torch.zeros(len(paths), len(mids))
    for r, idx in enumerate(rows):
        targets[r, idx] = 1.0
    multilabel = _task(task, any(len(r) > 1 for r in rows), path)
    return ClipSet(str(path), paths, targets, names, multilabel, bad)


def _task(task: str, has_multi: bool, where) -> bool:
    if task == "auto":
        return has_multi
    if task == "single" and has_multi:
        raise DataError(f"{where}: --task single, but some clips carry several labels; use --task multi")
    if task not in ("single", "multi"):
        raise DataError(f"--task must be auto, single or multi, got {task!r}")
    return task == "multi"


def load_folder(root, split: str, classes: list[str] | None = None) -> ClipSet:
    """``DIR/<split>/<class>/*.wav|flac``; single-label."""
    d = Path(root) / split
    if not d.is_dir():
        raise DataError(f"{d}: not found; a folder data set needs {root}/train/<class>/*.wav and {root}/test/<class>/...")
    found = sorted(p.name for p in d.iterdir() if p.is_dir())
    classes = classes or found
    extra = set(found) - set(classes)
    if extra:
        raise DataError(f"{d}: class folders {sorted(extra)} are not in train/; add them there or remove them")
    paths, ys = [], []
    for k, c in enumerate(classes):
        for f in sorted((d / c).glob("*")) if (d / c).is_dir() else []:
            if f.suffix.lower() in AUDIO_EXT:
                paths.append(str(f))
                ys.append(k)
    if not paths:
        raise DataError(f"{d}: no audio files ({', '.join(sorted(AUDIO_EXT))}) under class folders")
    targets = torch.nn.functional.one_hot(torch.tensor(ys), len(classes)).float()
    return ClipSet(str(d), paths, targets, list(classes), False)


def resolve(spec: str, split: str, labels=None, task: str = "auto", skip_bad: bool = False,
            classes: list[str] | None = None) -> ClipSet:
    """A data spec: ``builtin:events[?...]``, a folder (``split`` = train/test) or a JSON datafile."""
    if spec.startswith("builtin:"):
        root = builtin.materialize(spec)
        return load_datafile(root / f"{'train' if split == 'train' else 'val'}.json",
                             root / "class_labels_indices.csv", task, skip_bad)
    p = Path(spec)
    if p.is_dir():
        return load_folder(p, "train" if split == "train" else "test", classes)
    if p.suffix == ".json" or p.is_file():
        return load_datafile(p, labels, task, skip_bad)
    raise DataError(f"{spec}: no such data set; give builtin:events, a JSON datafile or a folder with train/ and test/")


UNLABELLED = "unlabelled"
HOLD_OUT = 10  # without --val, every 10th clip of an unlabelled folder validates the pretraining proxy


def _audio_files(d: Path) -> list[str]:
    return sorted(str(f) for f in d.rglob("*") if f.suffix.lower() in AUDIO_EXT and f.is_file())


def _unlabelled_paths(spec: str) -> tuple[list[str], list[str] | None]:
    """(train, val or None) audio paths of a pretraining data spec; labels are never read."""
    if spec.startswith("builtin:"):
        root = builtin.materialize(spec)
        return _unlabelled_paths(str(root / "train.json"))[0], _unlabelled_paths(str(root / "val.json"))[0]
    p = Path(spec)
    if p.is_dir():
        if (p / "train").is_dir():  # a class-folder data set: its train/ pretrains, its test/ validates
            test = p / "test"
            return _audio_files(p / "train"), _audio_files(test) if test.is_dir() else None
        return _audio_files(p), None
    if not p.is_file():
        raise DataError(f"{spec}: no such data; give builtin:events, a JSON datafile or a folder of audio files")
    try:
        doc = json.loads(read_text(p, DataError))
        entries = [e["wav"] for e in doc["data"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f'{p}: expected {{"data": [{{"wav": ...}}, ...]}} ({e})') from None
    return [str(w if Path(w).is_absolute() else p.parent / w) for w in map(Path, entries)], None


def unlabelled_sets(train: str, val: str | None = None) -> tuple[ClipSet, ClipSet]:
    """Pretraining clips (labels ignored): a folder of audio files (searched recursively), a datafile or
    builtin:events. Without a validation set, every 10th clip is held out for the validation proxy."""
    tr, va = _unlabelled_paths(train)
    if val is not None:
        va = _unlabelled_paths(val)[0]
    elif va is None:
        if len(tr) < 2:
            raise DataError(f"{train}: {len(tr)} audio file(s); pretraining needs at least 2 (one to validate)")
        va = tr[HOLD_OUT - 1::HOLD_OUT] or tr[-1:]
        held = set(va)
        tr = [f for f in tr if f not in held]
    if not tr or not va:
        raise DataError(f"{train if not tr else val}: no audio files ({', '.join(sorted(AUDIO_EXT))})")
    sets = [ClipSet(name, paths, torch.zeros(len(paths), 1), [UNLABELLED], False)
            for name, paths in ((train, tr), (val or train, va))]
    return sets[0], sets[1]


def default_frontend(spec: str, **over) -> FrontEnd:
    base = dict(builtin.FRONTEND) if spec.startswith("builtin:") else {}
    base.update({k: v for k, v in over.items() if v is not None})
    return FrontEnd(**base)


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


def _cache_key(clips: ClipSet, fe: FrontEnd, shift: float, target: int, skip_bad: bool, dtype: str) -> str:
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


def extract(clips: ClipSet, fe: FrontEnd, shift_ms: float, target: int, skip_bad: bool = False,
            cache_dir: Path | None = None, progress: bool = False, dtype: str = "float32") -> Features:
    """Fbank for every clip at `shift_ms`, from the Arrow cache when present (memory-mapped);
    `dtype` float16 halves the store."""
    path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        if cache_dir.exists() and not cache_dir.is_dir():
            raise DataError(f"feature cache {cache_dir} is a file, not a folder; point $C2F_CACHE at a folder "
                            f"or pass --no-cache")
        path = cache_dir / f"fbank-{_cache_key(clips, fe, shift_ms, target, skip_bad, dtype)}.arrow"
        if path.exists():
            try:
                return _read_store(path, fe.num_mel_bins, target)
            except (pa.ArrowException, OSError, ValueError, KeyError) as e:
                aside = path.with_name(path.name + ".damaged")
                os.replace(path, aside)
                print(f"warning: feature cache {path} cannot be read ({str(e).splitlines()[0][:120]}); "
                      f"moved it to {aside.name} and extracting again", file=sys.stderr)
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


def _fbank_chunks(clips: ClipSet, fe: FrontEnd, shift_ms: float, target: int, skip_bad: bool, progress: bool,
                  dtype: str, bad: list):
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


def _named(e: AudioError, clips: ClipSet) -> DataError:
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
    return Features(ChunkedRows(x), t.column("n_frames").to_numpy(), t.column("index").to_numpy(),
                    [tuple(b) for b in json.loads(meta[b"bad"])])


# --------------------------------------------------------------------------- streaming (no store)
def _cpus() -> int:
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


def scan_clips(clips: ClipSet, skip_bad: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
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

    def __init__(self, clips: ClipSet, fe: FrontEnd, shift_ms: float, target: int, kept, bad, pool, workers: int):
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
                    raise DataError(f"{bad[0][0]}: {bad[0][1]} (listed in {self.clips.name}; streaming decodes "
                                    f"clips only when they are trained on: drop it from the data set, or use a "
                                    f"feature store, whose --skip-bad skips it up front)")
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


def norm_stats(f: Features) -> tuple[float, float]:
    """Mean and std of the real (unpadded) frames of a training set, one chunk at a time, so a store is never
    read whole: float32 moments per chunk (fp16 stores too), merged in float64 (Chan et al.). A store of one
    chunk (every store written before chunking) gives the values it always gave, which runs resume on."""
    moments = []
    for start, x in zip(f.x.starts, f.x.chunks):
        real = np.arange(x.shape[-1])[None, :] < f.n_frames[start:start + len(x), None]
        vals = x.transpose(0, 2, 1)[real].astype(np.float32, copy=False)
        moments.append((vals.size, vals.mean(), vals.var()))
    count, mean, var = moments[0]
    for c, m, v in moments[1:]:
        d, total = float(m) - float(mean), count + c
        var = (float(var) * count + float(v) * c + d * d * count * c / total) / total
        mean, count = float(mean) + d * c / total, total
    return float(mean), float(np.sqrt(var))


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """AST's balanced sampling: label weight 1000 / (count + 0.01), a clip's weight the sum over its labels."""
    label = 1000.0 / (targets.sum(0).double() + 0.01)
    return (targets.double() * label).sum(1)


# --------------------------------------------------------------------------- target length
def clip_frames(clips: ClipSet, fe_sample_rate: int, shift_ms: float, frame_length_ms: float) -> np.ndarray:
    """Fbank frames per clip, read from the audio headers (no decoding); unreadable clips are left
    out here and reported by the extraction."""
    import soundfile as sf
    win, hop = fe_sample_rate * frame_length_ms / 1000, fe_sample_rate * shift_ms / 1000
    out = []
    for p in clips.paths:
        try:
            info = sf.info(p)
        except Exception:  # noqa: BLE001 - soundfile raises several types; extraction names the file later
            continue
        n = info.frames * fe_sample_rate / info.samplerate
        out.append(1 + int((n - win) // hop) if n >= win else 1)
    return np.array(out, dtype=np.int64)


def derive_target_length(clips: ClipSet, quantum: int, sample_rate: int = 16000, shift_ms: float = 10.0,
                         frame_length_ms: float = 25.0, coverage: float = 0.95) -> tuple[int, str]:
    """The length that covers `coverage` of the training clips, rounded up to a multiple of `quantum`
    (the largest C times the model's time granularity), and a sentence saying so."""
    frames = np.sort(clip_frames(clips, sample_rate, shift_ms, frame_length_ms))
    if not len(frames):
        return quantum, "no clip header could be read"
    k = frames[max(0, math.ceil(coverage * len(frames)) - 1)]
    T = max(quantum, math.ceil(k / quantum) * quantum)
    secs = (k - 1) * shift_ms / 1000 + frame_length_ms / 1000
    return T, (f"{int(100 * coverage)}% of the {len(frames)} training clips have at most {k} frames ({secs:.2f} s), "
               f"rounded up to a multiple of {quantum} (largest C x time granularity)")


# --------------------------------------------------------------------------- train/val data
class Data:
    """Train/val clip sets, the front end, normalization and lazily extracted features.

    `features`: ``fp32`` (the Arrow store, default), ``fp16`` (a store of half the size) or ``stream``
    (fbank per batch in `workers` processes, no store; for data sets whose store would not fit a disk)."""

    def __init__(self, train: ClipSet, val: ClipSet, fe: FrontEnd, norm=None, cache_dir=None,
                 skip_bad=False, progress=False, target_reason: str = "", test: ClipSet | None = None,
                 features: str = "fp32", workers: int | None = None):
        for other in (val, test):
            if other is not None and train.classes != other.classes:
                raise DataError(f"{other.name}: its classes differ from {train.name}'s; use one class_labels_indices.csv")
        if features not in FEATURE_MODES:
            raise DataError(f"--features must be one of {', '.join(FEATURE_MODES)}, got {features!r}")
        self.train, self.val, self.test, self.fe, self.target_reason = train, val, test, fe, target_reason
        self.cache_dir, self.skip_bad, self.progress = cache_dir, skip_bad, progress
        self.mode = features
        self.workers = workers or max(1, _cpus() - 1)
        self._feats: dict = {}
        self._scans: dict = {}
        self._executor = None
        self.num_classes, self.multilabel = len(train.classes), train.multilabel or val.multilabel
        self._norm = tuple(norm) if norm is not None else None

    @property
    def feature_dtype(self) -> str:
        """What training sees: streamed features are the fp32 store's values, computed later."""
        return "float16" if self.mode == "fp16" else "float32"

    @property
    def norm(self) -> tuple[float, float]:
        """Mean and std for normalization: given, or computed from the training set on first use
        (streamed: from NORM_SAMPLE evenly spaced training clips)."""
        if self._norm is None:
            f = self.features("train", self.fe.frame_shift_ms, self.fe.target_length)
            if self.mode == "stream":
                rows = np.unique(np.linspace(0, len(f.kept) - 1, min(NORM_SAMPLE, len(f.kept))).astype(np.int64))
                x, n = zip(*f.batches(np.array_split(rows, max(1, len(rows) // 16))))
                f = Features(ChunkedRows([b.numpy() for b in x]), torch.cat(n).numpy(), f.kept[rows], [])
            self._norm = norm_stats(f)
        return self._norm

    def _pool(self):
        """The worker processes of a streamed data set, shared by its splits and frame shifts. The
        platform's start method, as torch's DataLoader; the first call (from ``features``, in the main
        thread, before any loader thread runs) starts every worker."""
        if self._executor is None:
            from concurrent.futures import ProcessPoolExecutor
            self._executor = ProcessPoolExecutor(self.workers, initializer=_worker_init)
            self._executor.submit(int).result()
        return self._executor

    @property
    def mean(self) -> float:
        return self.norm[0]

    @property
    def std(self) -> float:
        return self.norm[1]

    @classmethod
    def from_specs(cls, train: str, val: str | None = None, labels=None, task="auto", skip_bad=False,
                   norm=None, cache_dir="auto", progress=False, quantum: int = 16, num_mel_bins=None,
                   target_length=None, test: str | None = None, target_reason: str | None = None,
                   labelled: bool = True, features: str = "fp32", workers: int | None = None) -> "Data":
        """`target_length` None derives it from the training clips (``derive_target_length``) unless
        the data set declares its own front end (``builtin:events``). `test` is a held-out split that
        only reporting reads (``Run.evaluate("test")``). `labelled` False reads audio only
        (pretraining): ``unlabelled_sets``."""
        if labelled:
            tr = resolve(train, "train", labels, task, skip_bad)
            va = resolve(val or train, "val", labels, task, skip_bad, classes=tr.classes)
        else:
            tr, va = unlabelled_sets(train, val)
        te = resolve(test, "test", labels, task, skip_bad, classes=tr.classes) if test else None
        if te is not None:
            shared = set(map(os.path.realpath, te.paths)) & set(map(os.path.realpath, tr.paths + va.paths))
            if shared:
                raise DataError(f"--test {test}: {len(shared)} of its clips are also training or validation clips "
                                f"(e.g. {sorted(shared)[0]}); a test split must be held out")
        if cache_dir == "auto":
            cache_dir = builtin.cache_root() / "features"
        fe_kw = {"num_mel_bins": num_mel_bins, "target_length": target_length}
        declared = builtin.FRONTEND if train.startswith("builtin:") else {}
        if target_length is not None:
            reason = target_reason or "given (--target-length)"
        elif "target_length" in declared:
            reason = f"the front end declared by {train.split('?')[0]}"
        else:
            fe_kw["target_length"], reason = derive_target_length(tr, quantum)
        return cls(tr, va, default_frontend(train, **fe_kw), norm, cache_dir, skip_bad, progress, reason, te,
                   features, workers)

    def features(self, split: str, shift_ms: float, frames: int) -> Features | StreamFeatures:
        key = (split, float(shift_ms), int(frames))
        if key not in self._feats:
            clips = getattr(self, split)
            if self.mode == "stream":
                if split not in self._scans:
                    self._scans[split] = scan_clips(clips, self.skip_bad)
                    self._pool()
                self._feats[key] = StreamFeatures(clips, self.fe, shift_ms, frames, *self._scans[split], self._pool,
                                                  self.workers)
            else:
                self._feats[key] = extract(clips, self.fe, shift_ms, frames, self.skip_bad, self.cache_dir,
                                           self.progress, self.feature_dtype)
        return self._feats[key]

    def targets(self, split: str, feats: Features) -> torch.Tensor:
        return getattr(self, split).targets[torch.from_numpy(np.array(feats.kept, dtype=np.int64))]

    def bad_report(self) -> list[tuple[str, str]]:
        seen = dict(self.train.bad + self.val.bad)
        for f in self._feats.values():
            seen.update(dict(f.bad))
        return sorted(seen.items())

    def used_counts(self) -> tuple[int, int]:
        """Clips actually used for training and validation (after --skip-bad)."""
        fe = self.fe
        return tuple(len(self.features(s, fe.frame_shift_ms, fe.target_length).kept) for s in ("train", "val"))
