"""``SearchSettings``: what a search was started with, saved as ``DIR/search.json`` so that
``--resume`` and ``pareto`` read the same settings."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

from ..errors import SpaceError
from ..io import atomic_write, read_json

# the data arguments (Data.from_specs) a search records, and their types
DATA_FIELDS = {"train": str, "val": str | None, "labels": str | None, "task": str, "skip_bad": bool,
               "norm": list | None, "cache_dir": str | None, "num_mel_bins": int | None, "target_length": int | None,
               "target_reason": str | None, "features": str, "workers": int | None, "labelled": bool}


@dataclass
class SearchSettings:
    space: str
    out: str
    data: dict  # kwargs for c2f_search.data.Data.from_specs, paths absolute; target_length and norm resolved
    trials: int | None = None  # None: 12, or the whole grid
    sampler: str = "auto"
    scheduler: str = "fifo"
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
    finetune: dict | None = None  # a pretraining search's fine-tune: {data (resolved), schedule, fixed}
    reuse_actors: bool = True  # Tune runs the next trial in a finished trial's process (trainables/c2f.py)
    flags: dict = field(default_factory=dict)  # the command-line flags it was started with, as given
    tuner_sha256: str | None = None  # of DIR/search/tuner.pkl as written: --resume unpickles only that file

    def save(self) -> None:
        atomic_write(Path(self.out) / "search.json", json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, out) -> "SearchSettings":
        """The settings of the search in `out`, wherever it was when it was written: a search folder can be
        moved or copied, and every command acts on the folder it is given."""
        p = Path(out) / "search.json"
        if not p.is_file():
            what = " (it holds a 'c2f-search train' run)" if (Path(out) / "config.json").is_file() else ""
            raise SpaceError(f"{p}: not found, so {out} is not the folder of a search{what}; give the --out DIR "
                             f"of a 'c2f-search search'")
        hints = get_type_hints(cls)
        d = read_json(p, {**{f.name: hints[f.name] for f in fields(cls)}, "data": DATA_FIELDS}, SpaceError)
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                   and f.name not in d]
        if missing:
            raise SpaceError(f"{p}: key {missing[0]!r} is missing; restore the file or start a new search in another "
                             f"--out")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known} | {"out": str(Path(out).resolve())})
