"""Data sets: AST JSON datafiles with ``class_labels_indices.csv``, class folders, unlabelled audio for
pretraining and ``builtin:events``; the derived target length; ``Data``, the train/val(/test) splits with
their front end, normalization and lazily extracted features (a store, ``store.py``, or streamed,
``stream.py``)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..files import read_text
from . import builtin_events as builtin
from .frontend import FrontEnd
from .store import FEATURE_MODES, ChunkedRows, Features, extract, norm_stats
from .stream import StreamFeatures, _worker_init, available_cpus, scan_clips

AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
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
            raise DataError(
                f"{path}: line {line}: mid {r['mid']!r} is already the class on line {first[r['mid']]}; "
                f"each class needs its own mid"
            ) from None
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
            problem = (
                f"label {missing[0]!r} is not in {labels_csv}; add it there or fix the entry"
                if missing
                else "empty 'labels'"
            )
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
        raise DataError(
            f"{d}: not found; a folder data set needs {root}/train/<class>/*.wav and {root}/test/<class>/..."
        )
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


def resolve(
    spec: str, split: str, labels=None, task: str = "auto", skip_bad: bool = False, classes: list[str] | None = None
) -> ClipSet:
    """A data spec: ``builtin:events[?...]``, a folder (``split`` = train/test) or a JSON datafile."""
    if spec.startswith("builtin:"):
        root = builtin.materialize(spec)
        return load_datafile(
            root / f"{'train' if split == 'train' else 'val'}.json", root / "class_labels_indices.csv", task, skip_bad
        )
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
        va = tr[HOLD_OUT - 1 :: HOLD_OUT] or tr[-1:]
        held = set(va)
        tr = [f for f in tr if f not in held]
    if not tr or not va:
        raise DataError(f"{train if not tr else val}: no audio files ({', '.join(sorted(AUDIO_EXT))})")
    sets = [
        ClipSet(name, paths, torch.zeros(len(paths), 1), [UNLABELLED], False)
        for name, paths in ((train, tr), (val or train, va))
    ]
    return sets[0], sets[1]


def default_frontend(spec: str, **over) -> FrontEnd:
    base = dict(builtin.FRONTEND) if spec.startswith("builtin:") else {}
    base.update({k: v for k, v in over.items() if v is not None})
    return FrontEnd(**base)


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


def derive_target_length(
    clips: ClipSet,
    quantum: int,
    sample_rate: int = 16000,
    shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
    coverage: float = 0.95,
) -> tuple[int, str]:
    """The length that covers `coverage` of the training clips, rounded up to a multiple of `quantum`
    (the largest C times the model's time granularity), and a sentence saying so."""
    frames = np.sort(clip_frames(clips, sample_rate, shift_ms, frame_length_ms))
    if not len(frames):
        return quantum, "no clip header could be read"
    k = frames[max(0, math.ceil(coverage * len(frames)) - 1)]
    T = max(quantum, math.ceil(k / quantum) * quantum)
    secs = (k - 1) * shift_ms / 1000 + frame_length_ms / 1000
    return T, (
        f"{int(100 * coverage)}% of the {len(frames)} training clips have at most {k} frames ({secs:.2f} s), "
        f"rounded up to a multiple of {quantum} (largest C x time granularity)"
    )


# --------------------------------------------------------------------------- train/val data
class Data:
    """Train/val clip sets, the front end, normalization and lazily extracted features.

    `features`: ``fp32`` (the Arrow store, default), ``fp16`` (a store of half the size) or ``stream``
    (fbank per batch in `workers` processes, no store; for data sets whose store would not fit a disk)."""

    def __init__(
        self,
        train: ClipSet,
        val: ClipSet,
        fe: FrontEnd,
        norm=None,
        cache_dir=None,
        skip_bad=False,
        progress=False,
        target_reason: str = "",
        test: ClipSet | None = None,
        features: str = FEATURE_MODES[0],
        workers: int | None = None,
    ):
        for other in (val, test):
            if other is not None and train.classes != other.classes:
                raise DataError(
                    f"{other.name}: its classes differ from {train.name}'s; use one class_labels_indices.csv"
                )
        if features not in FEATURE_MODES:
            raise DataError(f"--features must be one of {', '.join(FEATURE_MODES)}, got {features!r}")
        self.train, self.val, self.test, self.fe, self.target_reason = train, val, test, fe, target_reason
        self.cache_dir, self.skip_bad, self.progress = cache_dir, skip_bad, progress
        self.mode = features
        # never more processes than this node's cores (a search's trials may land on smaller nodes than the
        # driver, which refuses more than its own: DataSettings.from_flags)
        self.workers = min(workers, available_cpus()) if workers else max(1, available_cpus() - 1)
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
    def from_specs(
        cls,
        train: str,
        val: str | None = None,
        labels=None,
        task="auto",
        skip_bad=False,
        norm=None,
        cache_dir="auto",
        progress=False,
        quantum: int = 16,
        num_mel_bins=None,
        target_length=None,
        test: str | None = None,
        target_reason: str | None = None,
        labelled: bool = True,
        features: str = FEATURE_MODES[0],
        workers: int | None = None,
    ) -> Data:
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
                raise DataError(
                    f"--test {test}: {len(shared)} of its clips are also training or validation clips "
                    f"(e.g. {sorted(shared)[0]}); a test split must be held out"
                )
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
        return cls(
            tr, va, default_frontend(train, **fe_kw), norm, cache_dir, skip_bad, progress, reason, te, features, workers
        )

    def features(self, split: str, shift_ms: float, frames: int) -> Features | StreamFeatures:
        key = (split, float(shift_ms), int(frames))
        if key not in self._feats:
            clips = getattr(self, split)
            if self.mode == "stream":
                if split not in self._scans:
                    self._scans[split] = scan_clips(clips, self.skip_bad)
                    self._pool()
                self._feats[key] = StreamFeatures(
                    clips, self.fe, shift_ms, frames, *self._scans[split], self._pool, self.workers
                )
            else:
                self._feats[key] = extract(
                    clips, self.fe, shift_ms, frames, self.skip_bad, self.cache_dir, self.progress, self.feature_dtype
                )
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
