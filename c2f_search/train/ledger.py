"""The FLOPs ledger: what a run has spent (training, evaluation and controller FLOPs, training and
wall time) and what one step costs in each phase, by (method, C): a schedule's phases may name their own
methods, and a token-dropping phase costs the tokens it keeps. It is the one place that counts: ``Run`` adds to it,
controllers read it, and ASHA's ``max_t`` and the benchmarks ask it for an epoch's FLOPs."""

from __future__ import annotations

from types import MappingProxyType

from ..compress import get_method
from ..geometry import Geometry
from ..models.flops import kept_tokens
from ..models.phase import build_for_phase

COUNTERS = ("train_flops", "eval_flops", "train_time_s", "wall_time_s", "controller_flops", "compile_time_s")


class FlopsLedger:
    def __init__(self, cfg, num_classes: int, schedule, full: Geometry, objective, steps_per_epoch: int):
        """`schedule`: the run's, which names the method of each of its phases' C."""
        self.cfg, self.num_classes, self.schedule, self.full = cfg, num_classes, schedule, full
        self.objective, self.steps_per_epoch = objective, steps_per_epoch
        self._counters = dict.fromkeys(COUNTERS, 0.0)
        self._step_flops: dict[tuple[str, int], float] = {}

    @classmethod
    def for_config(cls, cfg, data) -> FlopsLedger:
        """A ledger for a run of `cfg` on `data` that is not built (ASHA's max_t, benchmarks)."""
        from ..objectives import make_objective
        from .pipeline import steps_per_epoch

        full = Geometry(data.fe.num_mel_bins, data.fe.target_length)
        return cls(
            cfg, data.num_classes, cfg.schedule, full, make_objective(cfg, data, full), steps_per_epoch(cfg, data)
        )

    @property
    def counters(self) -> MappingProxyType:
        """The cumulative counters, read-only: they change only through this ledger's methods."""
        return MappingProxyType(self._counters)

    @classmethod
    def for_input(cls, cfg, num_classes: int, full: Geometry, multilabel: bool = False) -> FlopsLedger:
        """A ledger for `cfg` on input of geometry `full` with `num_classes` classes, before any data exists
        (the ``flops`` command); an objective reads only these two of its data."""
        from types import SimpleNamespace

        from ..objectives import make_objective

        labels = SimpleNamespace(num_classes=num_classes, multilabel=multilabel)
        return cls(cfg, num_classes, cfg.schedule, full, make_objective(cfg, labels, full), steps_per_epoch=1)

    def sample_flops(self, C: int, method: str | None = None) -> float:
        """Training FLOPs per sample of a step of `method` at C (default: the method of the schedule's phase at
        C); the model is built once per (method, C), on meta."""
        method = get_method(method or self.schedule.method_at(C))
        key = (method.name, C)
        if key not in self._step_flops:
            m = build_for_phase(
                self.cfg.model, self.cfg.build_kwargs(self.num_classes), method, C, self.full, device="meta"
            )
            kept = kept_tokens(m, method, C)
            per_sample = self.objective.train_flops(m) if kept is None else self.objective.train_flops(m, kept=kept)
            self._step_flops[key] = float(per_sample)
        return self._step_flops[key]

    def step_flops(self, C: int, method: str | None = None) -> float:
        """Training FLOPs of one optimizer step (a full batch) of `method` at C."""
        return self.sample_flops(C, method) * self.cfg.batch_size

    def epoch_flops(self, C: int = 1, method: str | None = None) -> float:
        """Training FLOPs of one epoch at C: the steps trained, the last partial batch dropped."""
        return self.step_flops(C, method) * self.steps_per_epoch

    def planned_train_flops(self, controller=None) -> float:
        """The training FLOPs a run plans before it trains: each fixed phase's whole steps at its (method, C), as
        `Run` trains them. With the run's bound `controller` of a learned schedule, an upper bound: each learned
        phase at its longest (the controller's max), the whole within the controller's budget of full-resolution
        epochs. Without one, the ledger's own (fixed) schedule."""
        from ..controllers.adaptive import AdaptiveSchedule

        schedule = self.schedule if controller is None else controller.schedule
        if isinstance(controller, AdaptiveSchedule):
            steps = [controller.max_steps if n is None else n for n in controller.fixed_steps]
        else:
            steps = schedule.phase_steps(self.steps_per_epoch)
        total = sum(n * self.step_flops(p.C, p.method) for n, p in zip(steps, schedule.phases))
        budget = getattr(controller, "budget", None)
        return min(total, budget * self.epoch_flops(1)) if budget else total

    def add_train(self, C: int, method: str, steps: int = 1) -> None:
        self._counters["train_flops"] += self.step_flops(C, method) * steps

    def add_eval(self, flops: float) -> None:
        self._counters["eval_flops"] += flops

    def add_controller(self, train_flops: float = 0.0, eval_flops: float = 0.0) -> None:
        """Work a controller threw away (losing probes, a PBT member's own training): counted, never hidden."""
        self._counters["train_flops"] += train_flops
        self._counters["eval_flops"] += eval_flops
        self._counters["controller_flops"] += train_flops + eval_flops

    def add_time(self, train: float = 0.0, wall: float = 0.0, compile: float = 0.0) -> None:
        """`compile`: compilation and warm-up of a compiled step, kept out of `train` (and of every saving)."""
        self._counters["train_time_s"] += train
        self._counters["wall_time_s"] += wall
        self._counters["compile_time_s"] += compile

    def state_dict(self) -> dict:
        return dict(self._counters)

    def load_state_dict(self, counters: dict) -> None:
        self._counters = {**dict.fromkeys(COUNTERS, 0.0), **counters}
