"""The one settings merge. A command's settings are layered, each layer overriding the one before:
``TrainConfig``'s defaults < a recipe < what a run or search recorded < the flags given. This module holds
the pieces every command uses for that: ``DataSettings`` (the one schema of the data a run or search reads,
as ``config.json`` and ``search.json`` record it), ``given`` (which flags a command line gave), ``merged``
(the layering) and ``check_agrees`` (a flag that contradicts what was recorded is refused, in one line).
``SearchSettings`` is what a search was started with, saved as ``DIR/search.json`` so that ``--resume``,
``pareto``, ``confirm`` and ``report`` read the same settings."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import get_type_hints

from .data.store import FEATURE_MODES
from .errors import C2FError, SpaceError
from .files import atomic_write, read_json
from .layout import SearchDir

SAMPLERS = ("auto", "tpe", "gp", "nsga2", "random", "grid")
SCHEDULERS = ("fifo", "asha", "moasha", "pbt")  # --scheduler auto resolves to one (cli/search.py)


def flag(field: str) -> str:
    """A setting's command-line flag: ``lr_gamma`` -> ``--lr-gamma``."""
    return "--" + field.replace("_", "-")


def given(a, names) -> dict:
    """The flags among `names` that the command line gave: every flag defaults to None, so a value of 0,
    False or an empty list is given too."""
    return {k: getattr(a, k) for k in names if getattr(a, k, None) is not None}


def merged(*layers: dict) -> dict:
    """Later layers override earlier ones; ``model_kwargs`` (the model settings) merge key by key."""
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = {**out.get(k, {}), **v} if k == "model_kwargs" else v
    return out


def train_config(*layers: dict):
    """The ``TrainConfig`` of `layers` (``merged``) over its defaults, once every setting is checked."""
    from .config import TrainConfig
    from .validate import validate

    return validate(TrainConfig.from_dict(merged(*layers)))


def _finite(x) -> bool:
    import math

    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _same(a, b) -> bool:
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def _as_flag(name: str, value) -> str:
    """A setting's value as it would be given on the command line."""
    if value is True:
        return flag(name)
    if value is False:
        return f"--no-{flag(name)[2:]}"
    return f"{flag(name)} {list(value) if isinstance(value, tuple) else value}"


def check_agrees(recorded: dict, flags: dict, was: str, go_on: str, may_change=(), defaults=None, names=None) -> None:
    """Refuse the first setting in `flags` whose value differs from `recorded` (model settings compared one by
    one), naming its flag, what `was` recorded and how to `go_on`. Settings in `may_change` may differ;
    `defaults` gives the value of one the record does not hold; `names` maps a setting to its flag's name
    where they differ (``workers``: ``stream_workers``)."""
    defaults, names = defaults or {}, names or {}
    for k, v in flags.items():
        if k in may_change:
            continue
        if k == "model_kwargs":
            check_agrees(recorded.get(k) or {}, v, was, go_on)
            continue
        had = recorded.get(k, defaults.get(k))
        if not _same(had, v):
            name = names.get(k, k)
            had_text = "without it" if had is None else f"with {_as_flag(name, had)}"
            raise C2FError(f"{_as_flag(name, v)}: {was} {had_text}; {go_on}")


@dataclass
class DataSettings:
    """The data a run or a search reads: ``Data.from_specs``'s arguments, the one schema that ``config.json``
    and ``search.json`` record (``"data"``). ``FLAGS`` maps each data flag to its field."""

    train: str | None = None  # --data: builtin:events[?...], an AST JSON datafile or a class folder
    val: str | None = None
    labels: str | None = None  # class_labels_indices.csv
    task: str = "auto"
    skip_bad: bool = False
    norm: list | None = None  # [mean, std]; None: computed from the training set
    cache_dir: str | None = "auto"  # the feature cache; auto: $C2F_CACHE/features; None: --no-cache
    num_mel_bins: int | None = None
    target_length: int | None = None  # None: derived from the data (or declared by builtin:events)
    target_reason: str | None = None  # why the target length is what it is
    features: str = FEATURE_MODES[0]
    workers: int | None = None  # --stream-workers
    labelled: bool = True  # False: pretraining reads audio only

    FLAGS = {
        "data": "train",
        "val": "val",
        "labels": "labels",
        "task": "task",
        "skip_bad": "skip_bad",
        "norm": "norm",
        "no_cache": "cache_dir",
        "num_mel_bins": "num_mel_bins",
        "target_length": "target_length",
        "features": "features",
        "stream_workers": "workers",
    }
    # where features come from, not what they are: a resumed run may change them (Run checks the dtype)
    EXECUTION = ("cache_dir", "features", "workers")

    @classmethod
    def from_flags(cls, a) -> dict:
        """The data flags `a` gives, as fields (``--norm`` parsed, ``--no-cache`` as ``cache_dir: None``)."""
        from .data.frontend import parse_norm

        out = {cls.FLAGS[k]: v for k, v in given(a, cls.FLAGS).items()}
        if "norm" in out:
            norm = parse_norm(out["norm"])
            out["norm"] = None if norm is None else list(norm)
        if out.get("cache_dir") is not None:
            out["cache_dir"] = None if out["cache_dir"] else "auto"
        from .data.stream import available_cpus

        if out.get("workers") is not None and out["workers"] > available_cpus():
            raise C2FError(
                f"--stream-workers {out['workers']}: more worker processes than the {available_cpus()} CPU cores "
                f"here; use at most {available_cpus()} (default: the cores less one)"
            )
        return out

    @classmethod
    def from_recipe(cls, recipe) -> dict:
        """A recipe's front end as fields (its normalization given by data set name or as numbers)."""
        from .data.frontend import parse_norm

        if recipe is None:
            return {}
        d = dict(recipe.data)
        if isinstance(d.get("norm"), str):
            norm = parse_norm(d["norm"])
            d["norm"] = None if norm is None else list(norm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_run_record(cls, rec: dict) -> DataSettings:
        """A run's ``config.json`` record. Runs made before 0.3.0 recorded the data by flag name (``data``,
        ``no_cache``, ``stream_workers``, ``norm`` as given) and the resolved normalization and the target
        length's reason beside it."""
        d = dict(rec.get("data") or {})
        if "data" in d:  # the flag names of c2f-search 0.2
            d = {cls.FLAGS[k]: v for k, v in d.items() if k in cls.FLAGS}
            d["cache_dir"] = None if d.get("cache_dir") else "auto"
            d["norm"] = rec.get("norm")
            d["target_reason"] = rec.get("target_length_reason")
            d = {k: v for k, v in d.items() if v is not None or k in ("cache_dir", "norm")}
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)

    def problem(self) -> tuple[str, str] | None:
        """(field, what is wrong) of the first value no flag could have given (a hand-edited record), or None."""
        n = self.norm
        if n is not None and not (isinstance(n, list) and len(n) == 2 and all(_finite(x) for x in n) and n[1] > 0):
            return "norm", f"must be [mean, std] with finite numbers and std > 0, got {json.dumps(n)[:40]}"
        for k in ("num_mel_bins", "target_length", "workers"):
            v = getattr(self, k)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                return k, f"must be an integer >= 1 or null, got {json.dumps(v)[:40]}"
        if self.task not in ("auto", "single", "multi"):
            return "task", f"must be auto, single or multi, got {json.dumps(self.task)[:40]}"
        if self.features not in FEATURE_MODES:
            return "features", f"must be one of {', '.join(FEATURE_MODES)}, got {json.dumps(self.features)[:40]}"
        return None

    def resolved(self) -> DataSettings:
        """Absolute paths, a built-in data set generated and its front end written out, and the cache folder
        absolute, so that trials on any node and in any folder read the same data."""
        from .data import builtin_events

        d = replace(self)
        if d.train and d.train.startswith("builtin:"):
            root = builtin_events.materialize(d.train)
            if d.target_length is None:
                d.target_reason = f"the front end declared by {d.train.split('?')[0]}"
            d.num_mel_bins = d.num_mel_bins or builtin_events.FRONTEND["num_mel_bins"]
            d.target_length = d.target_length or builtin_events.FRONTEND["target_length"]
            d.train, d.val = str(root / "train.json"), d.val or str(root / "val.json")
            d.labels = str(root / "class_labels_indices.csv")
        absolute = lambda p: None if p is None else str(Path(p).resolve())  # noqa: E731
        d.train, d.val, d.labels = absolute(d.train), absolute(d.val), absolute(d.labels)
        if d.cache_dir == "auto":
            d.cache_dir = str(builtin_events.cache_root() / "features")
        elif d.cache_dir is not None:
            d.cache_dir = absolute(d.cache_dir)
        return d

    def load(self, **kw):
        """The ``Data`` these settings describe (``Data.from_specs``; `kw`: quantum, progress, test, ...)."""
        from .data import Data

        return Data.from_specs(**asdict(self), **kw)

    def with_data(self, data) -> DataSettings:
        """These settings with what loading `data` resolved: its normalization and front end."""
        return replace(
            self,
            norm=[data.mean, data.std],
            target_length=data.fe.target_length,
            num_mel_bins=data.fe.num_mel_bins,
            target_reason=self.target_reason or data.target_reason,
        )


def resolve_test(spec: str | None) -> str | None:
    """``--test`` as an absolute path (a built-in spec becomes its generated validation file)."""
    from .data import builtin_events

    if spec is None:
        return None
    if spec.startswith("builtin:"):
        return str(builtin_events.materialize(spec) / "val.json")
    return str(Path(spec).resolve())


# the data arguments a search records, and their types (search.json's "data")
DATA_FIELDS = {
    "train": str,
    "val": str | None,
    "labels": str | None,
    "task": str,
    "skip_bad": bool,
    "norm": list | None,
    "cache_dir": str | None,
    "num_mel_bins": int | None,
    "target_length": int | None,
    "target_reason": str | None,
    "features": str,
    "workers": int | None,
    "labelled": bool,
}


@dataclass
class SearchSettings:
    space: str
    out: str
    data: DataSettings  # paths absolute, the target length and normalization resolved
    trials: int | None = None  # None: 12, or the whole grid
    sampler: str = "auto"  # a folder written before "auto" meant gp: TPE (make_sampler)
    scheduler: str = "fifo"  # the command line's "auto" is resolved before this is recorded
    epochs: float | None = None
    seed: int = 0
    max_failures: int = 1
    keep_checkpoints: int | None = 2
    resources: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    metric_target: float | None = None
    storage: str | None = None  # Tune storage_path (local folder or URI); default DIR
    test: str | None = None  # held-out split (absolute): only the front's report reads it, no search decision
    target_length_reason: str = ""
    finetune: dict | None = None  # a pretraining search's fine-tune: {data (DataSettings), schedule, fixed}
    reuse_actors: bool = True  # Tune runs the next trial in a finished trial's process (trainables/c2f.py)
    flags: dict = field(default_factory=dict)  # the command-line flags it was started with, as given
    tuner_sha256: str | None = None  # of DIR/search/tuner.pkl as written: --resume unpickles only that file
    init: dict | None = None  # the pretrained init: {uri, sha256, size, models (those it initialises)}
    recipe: str | None = None  # a published recipe under the space's settings (--recipe or the space's)
    trackers: list = field(default_factory=list)  # --log: {kind, target, parent_run (MLflow)} each
    # --warm-start: the earlier search folders given; once imported, what each brought: {folder, case, trials}
    warm_start: list | None = None

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = DataSettings.from_dict(self.data)
        if self.finetune and isinstance(self.finetune.get("data"), dict):
            self.finetune = {**self.finetune, "data": DataSettings.from_dict(self.finetune["data"])}

    def save(self) -> None:
        atomic_write(SearchDir(self.out).settings, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, out) -> SearchSettings:
        """The settings of the search in `out`, wherever it was when it was written: a search folder can be
        moved or copied, and every command acts on the folder it is given."""
        from .layout import RunDir

        p = SearchDir(out).settings
        if not p.is_file():
            what = " (it holds a 'c2f-search train' run)" if RunDir(out).config.is_file() else ""
            raise SpaceError(
                f"{p}: not found, so {out} is not the folder of a search{what}; give the --out DIR "
                f"of a 'c2f-search search'"
            )
        hints = get_type_hints(cls)
        d = read_json(p, {**{f.name: hints[f.name] for f in fields(cls)}, "data": DATA_FIELDS}, SpaceError)
        missing = [
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in d
        ]
        if missing:
            raise SpaceError(
                f"{p}: key {missing[0]!r} is missing; restore the file or start a new search in another --out"
            )
        known = {f.name for f in fields(cls)}
        settings = cls(**{k: v for k, v in d.items() if k in known} | {"out": str(Path(out).resolve())})
        bad = settings.problem()
        if bad:
            raise SpaceError(
                f"{p}: key {bad[0]!r} {bad[1]}; restore the file (it was edited by hand?) or start a new search "
                f"in another --out"
            )
        return settings

    def problem(self) -> tuple[str, str] | None:
        """(key, what is wrong) of the first value the flags would have refused, or None."""
        from .config import MAX_SEED

        def count(v, low):
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        checks = [
            ("sampler", self.sampler in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
            ("scheduler", self.scheduler in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
            ("trials", self.trials is None or count(self.trials, 1), "an integer >= 1 or null"),
            ("epochs", self.epochs is None or _finite(self.epochs) and self.epochs > 0, "a number > 0 or null"),
            ("seed", count(self.seed, 0) and self.seed <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
            ("max_failures", count(self.max_failures, 0), "an integer >= 0"),
            ("keep_checkpoints", self.keep_checkpoints is None or count(self.keep_checkpoints, 0), "an integer >= 0"),
            (
                "metric_target",
                self.metric_target is None or _finite(self.metric_target) and 0 <= self.metric_target <= 1,
                "a number in [0, 1] or null",
            ),
        ]
        for k, v in self.resources.items():
            ok = k in ("cpu", "gpu") and (v is None or v == "auto" and k == "gpu" or _finite(v) and v >= 0)
            checks.append((f"resources.{k}", ok, "a number >= 0 or null (gpu: or auto)"))
        for key, ok, want in checks:
            if not ok:
                got = getattr(self, key, None) if "." not in key else self.resources.get(key.split(".")[1])
                return key, f"must be {want}, got {json.dumps(got)[:40]}"
        bad = self.data.problem()
        return (f"data.{bad[0]}", bad[1]) if bad else None
