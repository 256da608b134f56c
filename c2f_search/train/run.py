"""Multi-phase (coarse-to-fine) training of one run, without Ray: the phase loop.

``Run`` asks its phase controller what to do (``controllers/``), trains an interval with the step
(``step.py``) on batches of its input pipeline (``pipeline.py``), evaluates (``evaluator.py``), counts
what it spent (``ledger.py``) and hands every record (``records.py``) to its callbacks
(``callbacks.py``). ``Run.state_dict()`` is the full training state (weights, optimizer, LR schedule,
the run's own RNG, the phases trained, counters, callbacks' state), so a run restored from any record
continues exactly as if it had not stopped, and a run of another schedule may continue from it where
the controller accepts its history as a prefix (forking; ``state.py`` says when).

The step does not wait for the host: batches arrive from a prefetching thread, losses stay on the
device and are checked for NaN/inf once every ``check_every`` steps and at every evaluation. Every
step trains a full batch, so each phase has one static shape (and compiles once).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from types import MappingProxyType

import torch

from ..compress import get_method
from ..controllers import Adopt, Done, PhaseController, Train, Transition, make_controller
from ..geometry import Geometry
from ..models import get_family, load_model
from ..models.phase import build_for_phase, move_to_phase
from ..objectives import make_objective
from ..schedule import trained_schedule
from ..validate import check_against_data, validate
from .callbacks.averaging import WeightAverage
from .evaluator import Evaluator
from .ledger import FlopsLedger
from .optim import phase_optimizer
from .pipeline import InputPipeline, steps_per_epoch
from .precision import (
    device_name,
    grad_scaler,
    matmul_mode,
    mfu,
    peak_flops,
    resolve_device,
    resolve_precision,
    synchronize,
)
from .rng import RunRNG
from .state import STATE_VERSION, check_continues, relabel, upgrade
from .state import identity as state_identity
from .step import TrainStep, sum_finite

NONFINITE_CHECK_STEPS = 25  # one host read per this many steps (and at every evaluation)


class _ReadOnly(Sequence):
    def __init__(self, items: list[dict]):
        self._items = items

    def __getitem__(self, i):
        return MappingProxyType(self._items[i]) if isinstance(i, int) else _ReadOnly(self._items[i])

    def __len__(self):
        return len(self._items)


class Progress:
    """What a controller sees of a run: read-only progress, and ``fork`` to look ahead."""

    def __init__(self, run: Run):
        self._run = run

    step = property(lambda self: self._run.step)
    C = property(lambda self: self._run.C)
    phases = property(lambda self: _ReadOnly(self._run.phases))
    history = property(lambda self: _ReadOnly(self._run.history))
    counters = property(lambda self: self._run.counters)

    def step_flops(self, C: int) -> float:
        return self._run.ledger.step_flops(C)

    def fork(self, controller: PhaseController) -> Run:
        """A run forked from the current state and trained to its end under `controller` (e.g. a probe);
        the run itself is untouched until the controller answers ``Adopt(fork)``."""
        r = self._run
        child = Run(r.cfg, r.data, r.device, state=r.state_dict(), controller=controller)
        child.is_fork = True
        for _ in child.records():
            pass
        return child


class Run:
    def __init__(
        self,
        cfg,
        data,
        device="auto",
        state: dict | None = None,
        controller: PhaseController | None = None,
        callbacks=(),
        init_from: str | None = None,
    ):
        """`init_from`: a local copy of ``cfg.init`` to read (a search's trial reads a remote init from its
        node's cache); ``cfg.init`` stays what the run records."""
        self.cfg, self.data, self.device = validate(cfg), data, resolve_device(device)
        self.plan = cfg.schedule  # names the method of every phase's C
        self.controller = controller or make_controller(self.plan, cfg.transition, cfg.eval_every)
        family = get_family(cfg.model)
        self.full = Geometry(data.fe.num_mel_bins, data.fe.target_length)
        methods = {C: get_method(self.plan.method_at(C)) for C in self.controller.candidate_Cs()}
        family.check_geometry(cfg.model, self.full, [C for C, m in methods.items() if not m.drops_tokens])
        self.pipeline = InputPipeline(cfg, data, self.device)
        self.steps_per_epoch = steps_per_epoch(cfg, data)
        check_against_data(cfg, data)  # phases, evaluation interval and masks against this data
        self.controller.bind(self.steps_per_epoch)
        for C, m in methods.items():  # every phase's features up front (progress bars here)
            for split in ("train", "val"):
                self.pipeline.features(split, C, m)
        self.rng = RunRNG(cfg.seed, self.device)
        self.precision = resolve_precision(cfg.precision, self.device)  # a resumed state's own may differ
        self.compiled = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        self.scaler = grad_scaler(self.precision, self.device)
        self.device_name = device_name(self.device)
        self.peak = peak_flops(self.device_name, self.precision)
        self.objective = make_objective(cfg, data, self.full)
        self.ledger = FlopsLedger(cfg, data.num_classes, self.plan, self.full, self.objective, self.steps_per_epoch)
        self.evaluator = Evaluator(self.objective, self.pipeline, self.precision, self.device, self.ledger)
        self.averaging = (
            WeightAverage(cfg.weight_averaging, self.controller.final_C()) if cfg.weight_averaging else None
        )
        self.callbacks = [cb for cb in (self.averaging, *callbacks) if cb is not None]
        self.progress, self.check_every, self.is_fork = Progress(self), NONFINITE_CHECK_STEPS, False
        self.train_step: TrainStep | None = None
        self.step, self.done, self.history = 0, False, []
        first = self.controller.first_C()
        self.phases = [
            {
                "C": first,
                "method": self.plan.method_at(first),
                "steps": 0,
                "planned": self.controller.planned_steps(0),
                "reason": "start",
            }
        ]
        # initialised on the CPU, so a seed gives the same weights on any device; a state brings its own
        # weights and optimizer, so its placeholder model is shapes only
        with self.rng.active():
            self.model = build_for_phase(
                cfg.model,
                cfg.build_kwargs(data.num_classes),
                self.method,
                self.C,
                self.full,
                device="meta" if state is not None else None,
            )
        if state is not None:
            self.load_state_dict(state)
            return
        self.model = self.model.to(self.device)
        if cfg.init:
            family.load_init(self.model, init_from or cfg.init)
        self._new_optimizer()

    C = property(lambda self: self.phases[-1]["C"])
    method = property(lambda self: get_method(self.phases[-1]["method"]), doc="the current phase's method")
    phase = property(lambda self: len(self.phases) - 1, doc="0-based index of the phase being trained")
    schedule = property(lambda self: getattr(self.controller, "schedule", None))
    total_steps = property(lambda self: self.controller.total_steps())
    metric_name = property(lambda self: self.objective.metric_name)
    counters = property(lambda self: self.ledger.counters, doc="cumulative FLOPs and times, read-only")

    def _new_optimizer(self) -> None:
        self.opt, self.lr_sched = phase_optimizer(
            self.cfg, self.model.parameters(), self.device, self.steps_per_epoch, self.phases[-1]["planned"]
        )

    def _act(self) -> Train | Done:
        """Ask the controller until it says train or stop, carrying out transitions and adoptions."""
        while True:
            act = self.controller.next_action(self.progress)
            if isinstance(act, Transition):
                before = self.method
                self.phases.append(
                    {
                        "C": act.C,
                        "method": self.plan.method_at(act.C),
                        "steps": 0,
                        "reason": act.reason,
                        "planned": self.controller.planned_steps(len(self.phases)),
                    }
                )
                with self.rng.active():
                    self.model = move_to_phase(self.model, before, self.method, act.C, self.full)
                self.train_step = None  # compiled once per phase
                self._new_optimizer()
            elif isinstance(act, Adopt):
                self._adopt(act)
            elif isinstance(act, (Train, Done)):
                return act
            else:
                raise TypeError(
                    f"{type(self.controller).__name__}.next_action returned {act!r}; a controller "
                    f"answers Train, Transition, Adopt or Done"
                )

    def _adopt(self, act: Adopt) -> None:
        mine, state = self.controller, act.fork.state_dict()
        state["controller"] = {"name": mine.name, "describe": mine.describe(), "state": mine.state_dict()}
        for p in state["phases"][len(self.phases) :]:
            p["reason"] = act.reason or p["reason"]
        for r in state["history"][len(self.history) :]:
            r.update(schedule=mine.describe(), controller=mine.name)
        self.load_state_dict(state)
        self.ledger.add_controller(act.extra_train_flops, act.extra_eval_flops)

    def _train_until(self, stop: int) -> tuple[float, float, int]:
        """Train to step `stop`: (the mean training loss, the seconds and the steps of the interval that
        compiled or warmed up the step rather than trained at speed)."""
        self.model.train()
        if self.train_step is None or self.train_step.model is not self.model:  # compiled once per phase
            self.train_step = TrainStep(
                self.model, self.objective, self.precision, self.device, self.compiled, self.scaler
            )
        window, total, start, warm_s, warm_n = [], torch.zeros((), device=self.device), self.step, 0.0, 0
        order = [self.pipeline.batch_indices(s, self.steps_per_epoch) for s in range(self.step, stop)]
        method, C = self.method, self.C
        drop = method.drops_at(C)  # the kept tokens are the step's extra, drawn on the device
        with matmul_mode(self.precision, self.device), self.pipeline.train_batches(C, order, method) as batches:
            for x, y in batches:
                step, warm = self.train_step, self.train_step.calls < self.train_step.warmup_calls
                if warm:  # timed on its own: a compile is not training time
                    synchronize(self.device)
                    t = time.perf_counter()
                extra = (
                    method.keep_index(C, self.model.token_grid, x.shape[0], x.device)
                    if drop
                    else self.objective.extra(self.model, x)
                )
                window.append(step(x, y, self.opt, extra))
                if warm:
                    synchronize(self.device)
                    warm_s, warm_n = warm_s + time.perf_counter() - t, warm_n + 1
                self.lr_sched.step()
                self.step += 1
                self.phases[-1]["steps"] += 1
                self.ledger.add_train(C, method.name)
                if len(window) == self.check_every or self.step == stop:
                    total += sum_finite(window, self.step, f"phase {self.phase + 1}, C={self.C}", self.check_every)
                    window = []
                for cb in self.callbacks:
                    cb.on_step_end(self)
        return (float(total) / (stop - start) if stop > start else float("nan")), warm_s, warm_n

    def evaluate(self, split: str = "val") -> float:
        """The metric on `split` at the current C."""
        return self.evaluator.evaluate(self.model, split, self.C, self.method)[0]

    def _reached(self, metric: float, C: int) -> bool:
        """Budget mode counts only an evaluation of the final phase (the paper's definition)."""
        t = self.cfg.metric_target
        return t is not None and C == self.controller.final_C() and metric >= t

    def _hand_over(self, rec: dict) -> dict:
        for cb in self.callbacks:
            cb.on_eval_end(self, rec)
        for cb in self.callbacks if rec["phase_end"] and not rec["averaged"] else ():
            cb.on_phase_end(self, rec)
        return rec

    def records(self) -> Iterator[dict]:
        """Train to the end (or the metric target), yielding a record at each evaluation point."""
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while not self.done:
            t0, seen = time.perf_counter(), len(self.history)
            act = self._act()
            yield from map(self._hand_over, self.history[seen:])  # records of an adopted fork
            if isinstance(act, Done):  # e.g. a state saved at the very end
                self.done = True
                break
            self.ledger.step_flops(self.C)  # counted once per C, before the clock starts
            synchronize(self.device)  # the clock measures this interval's steps and nothing queued before them
            t1, steps, flops = time.perf_counter(), self.step, self.ledger.counters["train_flops"]
            with self.rng.active():
                loss, warm_s, warm_n = self._train_until(act.stop)
            synchronize(self.device)
            dt = time.perf_counter() - t1 - warm_s
            self.ledger.add_time(train=dt, compile=warm_s)
            phase = self.phases[-1]
            phase["train_time_s"] = phase.get("train_time_s", 0.0) + dt
            metric, val_loss = self.evaluator.evaluate(self.model, "val", self.C, self.method)
            self.ledger.add_time(wall=time.perf_counter() - t0)
            rec = {
                "schedule": self.controller.describe(),
                "controller": self.controller.name,
                "method": self.plan.label,
                "phase": self.phase + 1,
                "C": self.C,
                "epoch": self.step / self.steps_per_epoch,
                "step": self.step,
                "train_loss": loss,
                "val_loss": val_loss,
                "val_metric": metric,
                "metric_name": self.metric_name,
                **self.ledger.counters,
                "averaged": False,
                "phase_train_time_s": phase["train_time_s"],
                "precision": self.precision,
                "device": self.device_name,
                "samples_per_s": (self.step - steps - warm_n) * self.cfg.batch_size / dt,
                "mfu": mfu(
                    self.ledger.counters["train_flops"] - flops - warm_n * self.ledger.step_flops(self.C), dt, self.peak
                ),
            }
            self.controller.observe(self.progress, rec)
            nxt = self.controller.next_action(self.progress)
            reached = self._reached(metric, self.C)
            self.done = reached or isinstance(nxt, Done)
            rec.update(
                phase_end=not isinstance(nxt, Train),
                schedule_done=self.done,
                target_reached=reached,
                reason=None
                if isinstance(nxt, Train)
                else ("metric target reached" if reached and not isinstance(nxt, Done) else nxt.reason),
                trained=trained_schedule(self.phases, self.steps_per_epoch),
            )
            self.history.append(rec)
            yield self._hand_over(rec)
        for cb in self.callbacks if not self.is_fork else ():  # a fork's end is not the run's
            rec = cb.on_fit_end(self)
            if rec is not None:
                self.history.append(rec)
                yield self._hand_over(rec)

    def fit(self) -> list[dict]:
        """Train to the end; the run's records."""
        for _ in self.records():
            pass
        return self.history

    # ------------------------------------------------------------------ state
    def identity(self) -> dict:
        return state_identity(self.cfg, self.data, self.steps_per_epoch)

    def state_dict(self) -> dict:
        c = self.controller
        return {
            "version": STATE_VERSION,
            "config": self.cfg.to_dict(),
            "identity": self.identity(),
            "controller": {"name": c.name, "describe": c.describe(), "state": c.state_dict()},
            "phases": [dict(p) for p in self.phases],
            "step": self.step,
            "done": self.done,
            "counters": self.ledger.state_dict(),
            "history": [dict(r) for r in self.history],
            "model_name": self.model.model_name,
            "model_kwargs": dict(self.model.model_kwargs),
            "geometry": self.model.geometry.as_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "lr_sched": self.lr_sched.state_dict(),
            "rng": self.rng.state_dict(),
            "precision": self.precision,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
        }

    def load_state_dict(self, s: dict) -> None:
        """Continue from a saved state: this run's own (resume) or one whose trained history the
        controller accepts as a prefix (fork). Anything else is refused, saying why."""
        s, c = upgrade(s), self.controller
        check_continues(s, self.identity(), self.plan, c, self.cfg.lr_schedule == "cosine")
        if s["controller"]["name"] == c.name and s["controller"]["describe"] == c.describe():
            c.load_state_dict(s["controller"]["state"])
        self.phases, self.step = [dict(p) for p in s["phases"]], s["step"]
        self.phases[-1]["planned"] = c.planned_steps(len(self.phases) - 1)
        self.ledger.load_state_dict(s["counters"])
        self.history = [dict(r) for r in s["history"]]
        relabel(self.history, c, self._reached, self.step)
        # copies: a state taken from a live run (a fork, a probe) must not share its tensors
        self.model = load_model(
            s["model_name"],
            Geometry(**s["geometry"]),
            s["model_kwargs"],
            {k: v.clone() for k, v in s["model"].items()},
            self.device,
        )
        self._new_optimizer()
        self.opt.load_state_dict(copy.deepcopy(s["optimizer"]))
        self.lr_sched.load_state_dict(s["lr_sched"])
        self.rng.load_state_dict(s["rng"])
        if self.scaler is not None and s["scaler"]:
            self.scaler.load_state_dict(s["scaler"])
        for cb in self.callbacks:
            if cb.state_key:
                cb.load_state_dict(s["callbacks"].get(cb.state_key))
        last = self.history[-1] if self.history else None
        self.done = bool(last and last["step"] == self.step and last["schedule_done"])
