"""Published training recipes, one YAML data file each (``--recipe NAME``; docs/recipes.md).

A recipe sets the epochs (the default schedule is the baseline ``none:1xE``), the front end
(``data``: target length, mel bins, normalization statistics), the model and the training settings
(``train``: any ``TrainConfig`` field). Explicit flags override it. ``lr_milestones`` may be written as
AST's ``{start: S, step: K}`` (MultiStepLR at S, S+K, ... epochs of each phase), expanded up to epoch 100.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import ConfigError

HERE = Path(__file__).parent
KEYS = {"name", "description", "epochs", "data", "model", "train"}
DATA_KEYS = {"target_length", "num_mel_bins", "norm"}
MILESTONE_HORIZON = 100


@dataclass
class Recipe:
    name: str
    description: str
    epochs: float
    data: dict
    model: str
    model_kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)

    @property
    def schedule(self) -> str:
        return f"none:1x{self.epochs:g}"

    def config(self) -> dict:
        """TrainConfig fields (without the schedule)."""
        return {"model": self.model, "model_kwargs": dict(self.model_kwargs), **self.train}


def list_recipes() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def _bad(name, why) -> ConfigError:
    return ConfigError("recipe", f"{name}: {why}")


def load_recipe(name: str) -> Recipe:
    path = HERE / f"{name}.yaml"
    if not path.is_file():
        raise _bad(name, f"no such recipe; choose one of {', '.join(list_recipes())}")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or set(doc) - KEYS or not {"epochs", "model", "train"} <= set(doc):
        raise _bad(name, f"{path} needs the keys epochs, model, train (and may have {', '.join(sorted(KEYS))})")
    data = doc.get("data") or {}
    if set(data) - DATA_KEYS:
        raise _bad(name, f"data key {sorted(set(data) - DATA_KEYS)[0]!r} is not one of {', '.join(sorted(DATA_KEYS))}")
    model = dict(doc["model"])
    train = dict(doc["train"])
    ms = train.get("lr_milestones")
    if isinstance(ms, dict):
        train["lr_milestones"] = list(range(int(ms["start"]), MILESTONE_HORIZON + 1, int(ms.get("step", 1))))
    from ..config import TrainConfig

    known = {f.name for f in fields(TrainConfig)} - {"schedule", "model", "model_kwargs"}
    if set(train) - known:
        raise _bad(name, f"train key {sorted(set(train) - known)[0]!r} is not a TrainConfig setting")
    recipe = Recipe(
        doc.get("name", name), doc.get("description", ""), float(doc["epochs"]), data, model.pop("name"), model, train
    )
    from ..validate import validate

    validate(TrainConfig(recipe.schedule, **recipe.config()))  # every value passes the usual checks
    return recipe
