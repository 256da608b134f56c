"""The objective contract: what a ``Run`` minimises and how held-out data is scored
(``TrainConfig.objective``). One module per objective behind ``Objective``, registered by name:

* ``supervised``   - CE or BCE on the labels; accuracy or mAP (``supervised.py``);
* ``masked-patch`` - SSAST's self-supervised pretraining (``masked_patch.py``).

The evaluator (``evaluator.py``) owns the one evaluation loop; an objective supplies a ``Scorer``
that takes each prepared batch and gives (metric, loss) at the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..geometry import Geometry
from ..registry import Registry

OBJECTIVES: Registry[type[Objective]] = Registry(
    "objective",
    __package__,
    lambda name, names: ConfigError("objective", f"must be one of {', '.join(names)}, got {name!r}"),
)


class Scorer(ABC):
    """Scores the batches of one evaluation, in order; ``result`` reads the device once."""

    @abstractmethod
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None: ...

    @abstractmethod
    def result(self) -> tuple[float, float]:
        """(metric, loss) over every batch added."""


class Objective(ABC):
    name: ClassVar[str]
    supervised: ClassVar[bool] = True  # reads labels
    # trains with token dropping (tpatchout, ...): its ``forward_loss`` gets the kept token indices as `extra`
    # in such a phase, and ``train_flops`` takes `kept`, the tokens a step keeps
    takes_token_drop: ClassVar[bool] = False

    def __init__(self, cfg, data, full: Geometry):
        """`data` gives ``num_classes`` and ``multilabel``; `full` is the full-resolution input."""
        self.cfg, self.data, self.full = cfg, data, full

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse settings this objective cannot train with (one ``ConfigError``)."""

    @property
    @abstractmethod
    def metric_name(self) -> str: ...

    def extra(self, model, x):
        """What the step needs drawn beforehand, outside the compiled forward (e.g. masks); None."""
        return None

    @abstractmethod
    def forward_loss(self, model, x, y, extra) -> torch.Tensor:
        """The training loss of one batch (compiled with the forward)."""

    @abstractmethod
    def train_flops(self, model) -> int:
        """Training FLOPs (forward + backward) per sample of this phase's model (an objective that takes token
        dropping also takes ``kept=``, the tokens a step keeps)."""

    @abstractmethod
    def eval_flops(self, model) -> int:
        """Evaluation FLOPs per sample."""

    @abstractmethod
    def scorer(self, model, C: int) -> Scorer:
        """A fresh scorer for one evaluation of `model` at C."""


def register_objective(cls: type[Objective]) -> type[Objective]:
    return OBJECTIVES.register(cls.name, cls)


def get_objective(name: str) -> type[Objective]:
    return OBJECTIVES.get(name)


def make_objective(cfg, data, full: Geometry) -> Objective:
    return get_objective(cfg.objective)(cfg, data, full)
