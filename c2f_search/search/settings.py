"""``SearchSettings``: what a search was started with, saved as ``DIR/search.json`` so that
``--resume`` and ``pareto`` read the same settings."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import SpaceError
from ..io import atomic_write


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
            raise SpaceError(f"{p}: not found; --resume needs the DIR of an earlier search")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise SpaceError(f"{p}: not valid JSON ({e}); restore it or start a new search in another --out") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known} | {"out": str(Path(out).resolve())})
