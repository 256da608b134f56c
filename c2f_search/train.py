"""Multi-phase (coarse-to-fine) training of one run, without Ray.

``Run`` trains and evaluates; a phase controller (``controllers.py``) decides when a phase ends
and at which C the next one trains. ``Run.records()`` yields one record (``records.py``) at every
evaluation point. ``Run.state_dict()`` is the full training state (weights, optimizer, LR
schedule, the run's own RNG, the phases trained, counters), so a run restored from any record
continues exactly as if it had not stopped, and a run of another schedule may continue from it
where the controller accepts its history as a prefix (forking).

The step does not wait for the host (``step.py``): batches arrive from a prefetching thread
(``loader.py``), losses stay on the device and are checked for NaN/inf once every
``check_every`` steps and at every evaluation. Every step trains a full batch: the last partial
batch of an epoch is dropped, so each phase has one static shape (and compiles once).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Iterator

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multilabel_average_precision

from .averaging import WeightAverage
from .checks import check_batch_size, check_geometry
from .compress import get_method
from .config import TrainConfig
from .controllers import Done, PhaseController, Train, Transition, make_controller
from .data import Data, balanced_weights
from .errors import CheckpointError, ConfigError, NonFiniteLoss
from .flops import eval_flops
from .frontend import add_noise, normalize, spec_augment
from .geometry import Geometry
from .loader import Prefetcher, host_batches
from .models import get_family, load_model
from .objectives import make_objective
from .precision import autocast, device_name, grad_scaler, matmul_mode, mfu, peak_flops, resolve_precision
from .rng import RunRNG
from .schedule import parse_schedule
from .step import TrainStep, adam, classification_loss
from .transfer import build_for_phase, transfer_weights

STATE_VERSION = 3
EVAL_BATCH = 256
NONFINITE_CHECK_STEPS = 25  # one host read per this many steps (and at every evaluation)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for, but no CUDA device is visible; use cpu or auto")
    return torch.device(device)


class Run:
    def __init__(self, cfg: TrainConfig, data: Data, device="auto", state: dict | None = None,
                 controller: PhaseController | None = None, exploit: bool = False):
        self.cfg, self.data = cfg, data
        self.device = resolve_device(device) if isinstance(device, str) else device
        schedule = parse_schedule(cfg.schedule)
        self.method = get_method(schedule.method)
        self.controller = controller or make_controller(schedule, cfg.transition, cfg.eval_every)
        get_family(cfg.model).check_method(cfg.model, self.method.name)
        fe = data.fe
        self.full = Geometry(fe.num_mel_bins, fe.target_length)
        check_geometry(cfg, fe, self.controller.candidate_Cs())
        self.n_train = len(data.features("train", fe.frame_shift_ms, fe.target_length).kept)
        check_batch_size(cfg.batch_size, self.n_train)
        self.steps_per_epoch = self.n_train // cfg.batch_size  # the last partial batch is dropped: static shapes
        self.controller.bind(self.steps_per_epoch)
        for C in self.controller.candidate_Cs():  # every phase's features up front (progress bars here)
            for split in ("train", "val"):
                self._features(split, C)
        self.rng = RunRNG(cfg.seed, self.device)
        # auto adopts the precision of the state it continues, so a resume never changes numerics
        asked = state.get("precision", "auto") if state is not None and cfg.precision == "auto" else cfg.precision
        self.precision = resolve_precision(asked, self.device)
        self.compiled = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        self.scaler = grad_scaler(self.precision, self.device)
        self.device_name = device_name(self.device)
        self.peak = peak_flops(self.device_name, self.precision)
        self.check_every = NONFINITE_CHECK_STEPS
        self._train_step: TrainStep | None = None
        self._step_flops: dict[int, float] = {}
        self._beta = None
        self.step, self.done = 0, False
        self.phases = [{"C": self.controller.first_C(), "steps": 0, "planned": self.controller.planned_steps(0),
                        "reason": "start"}]
        self.counters = {"train_flops": 0.0, "eval_flops": 0.0, "train_time_s": 0.0, "wall_time_s": 0.0,
                         "controller_flops": 0.0}
        self.history: list[dict] = []
        self.on_step = None  # optional callback after each optimizer step (progress bars)
        # initialised on the CPU, so a seed gives the same weights on any device; a state brings its own
        # weights and optimizer, so its placeholder model is shapes only
        with self.rng.active():
            self.model = build_for_phase(cfg.model, self._model_kwargs(), self.method, self.C, self.full,
                                         device="meta" if state is not None else None)
        if state is None:
            self.model = self.model.to(self.device)
        if cfg.init and state is None:
            get_family(cfg.model).load_init(self.model, cfg.init)
        self.objective = make_objective(self)
        self.averager = (WeightAverage(cfg.weight_averaging, self.controller.final_C())
                         if cfg.weight_averaging else None)
        if state is None:
            self._new_optimizer()
        else:
            self.load_state_dict(state, exploit=exploit)

    def _model_kwargs(self) -> dict:
        return {"num_classes": self.data.num_classes, **self.cfg.model_kwargs}

    # ------------------------------------------------------------------ phases
    @property
    def C(self) -> int:
        return self.phases[-1]["C"]

    @property
    def phase(self) -> int:
        """0-based index of the phase being trained."""
        return len(self.phases) - 1

    @property
    def schedule(self):
        return getattr(self.controller, "schedule", None)

    @property
    def total_steps(self) -> int | None:
        return self.controller.total_steps()

    def _features(self, split: str, C: int):
        fe = self.data.fe
        return self.data.features(split, self.method.frame_shift(fe.frame_shift_ms, C),
                                  self.method.feature_length(fe.target_length, C))

    def _new_optimizer(self) -> None:
        """Fresh Adam and LR schedule: the paper resets both at every phase."""
        c = self.cfg
        self.opt = adam(self.model.parameters(), c.lr, c.weight_decay, c.betas, self.device)
        spe, ms, g, wu = self.steps_per_epoch, c.lr_milestones, c.lr_gamma, c.warmup_steps
        planned = self.phases[-1]["planned"]
        if c.lr_schedule == "cosine" and planned is None:
            raise ConfigError("lr_schedule", "cosine needs each phase's length up front; this controller decides "
                                             "it on the way, use lr_schedule step")

        def factor(s: int) -> float:
            warm = min(1.0, (s + 1) / wu) if wu > 0 else 1.0
            if c.lr_schedule == "cosine":
                return warm * 0.5 * (1 + math.cos(math.pi * min(s, planned) / max(1, planned)))
            return warm * g ** sum(s >= m * spe for m in ms)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

    def _transition(self, C: int, reason: str) -> None:
        self.phases.append({"C": C, "steps": 0, "planned": self.controller.planned_steps(len(self.phases)),
                            "reason": reason})
        self.model = transfer_weights(self.model, self.method.geometry(C, self.full), self.method)
        self._new_optimizer()

    # ------------------------------------------------------------------ data
    def _batch_indices(self, step: int) -> np.ndarray:
        """Data order is a pure function of (seed, data epoch, step): nothing to carry but the step."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if getattr(self, "_perm_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            if self.cfg.balanced_sampling:  # AST's WeightedRandomSampler, drawn from (seed, epoch) alone
                order = torch.multinomial(self._clip_weights(), self.n_train, replacement=True, generator=g)
            else:
                order = torch.randperm(self.n_train, generator=g)
            self._perm, self._perm_epoch = order.numpy(), epoch
        B = self.cfg.batch_size
        return self._perm[b * B:(b + 1) * B]

    def _clip_weights(self) -> torch.Tensor:
        if getattr(self, "_weights", None) is None:
            fe = self.data.fe  # the clips n_train counts
            self._weights = balanced_weights(self.data.targets("train", self.data.features("train", fe.frame_shift_ms,
                                                                                             fe.target_length)))
        return self._weights

    def _batches(self, feats, targets, index_batches) -> Prefetcher:
        return Prefetcher(host_batches(feats, targets, index_batches), self.device)

    def _inputs(self, feats, idx, train: bool) -> torch.Tensor:
        """One batch of `feats`, prepared on the device (objectives that draw their own batches use it)."""
        x, n = feats.batch(idx)
        return self._prepare(x.to(self.device), n.to(self.device), train)

    def _prepare(self, x, n, train: bool) -> torch.Tensor:
        """On the device: a fp16 store's batch to fp32, the method's transform, SpecAugment, normalization."""
        x = self.method.transform(x.float(), n, self.C)
        if train:
            x = spec_augment(x, self.cfg.freqm, self.cfg.timem // self.method.time_mask_scale(self.C))
        x = normalize(x, self.data.mean, self.data.std)
        return add_noise(x, self.method.time_mask_scale(self.C)) if train and self.cfg.noise else x

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ train / eval
    def _train_until(self, stop: int) -> float:
        self.model.train()
        feats = self._features("train", self.C)
        targets = self.data.targets("train", feats)
        if self._train_step is None or self._train_step.model is not self.model:  # compiled once per phase
            self._train_step = TrainStep(self.model, self.objective, self.precision, self.device, self.compiled,
                                         self.scaler)
        flops, start = self.objective.train_flops(self.model) * self.cfg.batch_size, self.step
        window, total = [], torch.zeros((), device=self.device)
        order = [self._batch_indices(s) for s in range(self.step, stop)]
        with matmul_mode(self.precision, self.device), self._batches(feats, targets, order) as batches:
            for x, n, y in batches:
                x = self._prepare(x, n, True)
                if self.cfg.mixup > 0:
                    x, y = self._mixup(x, y)
                window.append(self._train_step(x, y, self.opt, self.objective.extra(self.model, x)))
                self.lr_sched.step()
                self.step += 1
                self.phases[-1]["steps"] += 1
                self.counters["train_flops"] += flops
                if len(window) == self.check_every or self.step == stop:
                    total += self._check_finite(window)
                    window = []
                if self.on_step is not None:
                    self.on_step()
        return float(total) / (stop - start) if stop > start else float("nan")

    def _check_finite(self, window: list) -> torch.Tensor:
        """The window's losses, summed on the device; one host read says whether all are finite, and
        if not, which step came first (the steps after it have run: say so)."""
        losses = torch.stack(window)
        bad = ~torch.isfinite(losses)
        if bad.any():
            k = int(bad.nonzero()[0])
            raise NonFiniteLoss(f"loss is {losses[k].item()} at step {self.step - len(window) + k} (phase "
                                f"{self.phase + 1}, C={self.C}; found at step {self.step - 1} by the check that runs "
                                f"every {self.check_every} steps); lower --lr or check the data")
        return losses.sum()

    def _mixup(self, x, y):
        if self._beta is None:  # lambda drawn on the device, from the run's stream there
            ten = torch.tensor(10.0, device=self.device)
            self._beta = torch.distributions.Beta(ten, ten)
        return _mixup(x, y, self.cfg.mixup, self._beta)

    @torch.no_grad()
    def _evaluate(self, split: str = "val") -> tuple[float, float]:
        """(metric, loss) on `split` at the current C, in the run's precision (eager: only the training step
        is compiled). Only validation evaluations count as eval FLOPs (a test evaluation is reporting)."""
        if not self.objective.supervised:
            return self.objective.evaluate()
        self.model.eval()
        feats = self._features(split, self.C)
        n = len(feats.kept)
        y = self.data.targets(split, feats)
        outs = []
        order = [np.arange(s, min(n, s + EVAL_BATCH)) for s in range(0, n, EVAL_BATCH)]
        with matmul_mode(self.precision, self.device), self._batches(feats, y, order) as batches:
            for x, nf, _ in batches:
                x = self._prepare(x, nf, False)
                with autocast(self.precision, self.device):
                    outs.append(self.model(x).float())
        logits = torch.cat(outs).cpu()
        if split == "val":
            self.counters["eval_flops"] += eval_flops(self.model) * n
        loss = float(classification_loss(logits, y, self.objective.multilabel))
        if self.data.multilabel:
            return float(multilabel_average_precision(torch.sigmoid(logits), y.int(), num_labels=y.shape[1],
                                                      average="macro")), loss
        return float(multiclass_accuracy(logits, y.argmax(1), num_classes=y.shape[1], average="micro")), loss

    def evaluate(self, split: str = "val") -> float:
        """The metric on `split` at the current C."""
        return self._evaluate(split)[0]

    def step_flops(self, C: int) -> float:
        """Training FLOPs of one optimizer step at C (a full batch); the model is built once per C."""
        if C not in self._step_flops:
            m = build_for_phase(self.cfg.model, self._model_kwargs(), self.method, C, self.full, device="meta")
            self._step_flops[C] = float(self.objective.train_flops(m) * self.cfg.batch_size)
        return self._step_flops[C]

    def trained_schedule(self) -> str:
        """The phases trained so far as a fixed schedule that re-runs them standalone."""
        from .schedule import Phase, Schedule
        phases = [Phase(p["C"], p["steps"] / self.steps_per_epoch) for p in self.phases if p["steps"]]
        if not phases:
            return ""
        return str(Schedule(self.method.name, tuple(phases), coarse_only=phases[-1].C != 1))

    def spawn(self, controller: PhaseController) -> "Run":
        """A run forked from this one's current state, driven by another controller (e.g. a probe)."""
        return Run(self.cfg, self.data, self.device, state=self.state_dict(), controller=controller)

    def adopt(self, other: "Run", extra_flops: float = 0.0, extra_eval_flops: float = 0.0, reason: str = "") -> None:
        """Continue from a spawned run's state (its steps become this run's own), adding the FLOPs of
        work thrown away (e.g. losing probes) to this run's cost."""
        mine = self.controller
        state = other.state_dict()
        state["controller"] = {"name": mine.name, "describe": mine.describe(), "state": mine.state_dict()}
        for p in state["phases"][len(self.phases):]:
            p["reason"] = reason or p["reason"]
        for r in state["history"][len(self.history):]:
            r.update(schedule=mine.describe(), controller=mine.name)
        self.load_state_dict(state)
        self.counters["train_flops"] += extra_flops
        self.counters["eval_flops"] += extra_eval_flops
        self.counters["controller_flops"] += extra_flops + extra_eval_flops

    @property
    def metric_name(self) -> str:
        return self.objective.metric_name

    def _reached(self, metric: float, C: int) -> bool:
        """Budget mode counts only an evaluation of the final phase (the paper's definition)."""
        t = self.cfg.metric_target
        return t is not None and C == self.controller.final_C() and metric >= t

    def _act(self):
        act = self.controller.next_action(self)
        while isinstance(act, Transition):
            with self.rng.active():
                self._transition(act.C, act.reason)
            act = self.controller.next_action(self)
        return act

    def records(self, progress=None) -> Iterator[dict]:
        """Train to the end (or the metric target), yielding a record at each evaluation point."""
        while not self.done:
            t0 = time.perf_counter()
            seen = len(self.history)
            act = self._act()
            yield from self.history[seen:]  # records a controller adopted (a winning probe's)
            if isinstance(act, Done):  # e.g. a state saved at the very end
                self.done = True
                return
            self._sync()  # the clock measures this interval's steps and nothing queued before them
            t1, steps, flops = time.perf_counter(), self.step, self.counters["train_flops"]
            with self.rng.active():
                loss = self._train_until(act.stop)
            self._sync()
            dt = time.perf_counter() - t1
            self.counters["train_time_s"] += dt
            phase = self.phases[-1]
            phase["train_time_s"] = phase.get("train_time_s", 0.0) + dt
            metric, val_loss = self._evaluate()
            self.counters["wall_time_s"] += time.perf_counter() - t0
            rec = {"schedule": self.controller.describe(), "controller": self.controller.name,
                   "method": self.method.name, "phase": self.phase + 1, "C": self.C,
                   "epoch": self.step / self.steps_per_epoch, "step": self.step, "train_loss": loss,
                   "val_loss": val_loss, "val_metric": metric, "metric_name": self.metric_name, **self.counters,
                   "averaged": False, "phase_train_time_s": phase["train_time_s"], "precision": self.precision,
                   "device": self.device_name, "samples_per_s": (self.step - steps) * self.cfg.batch_size / dt,
                   "mfu": mfu(self.counters["train_flops"] - flops, dt, self.peak)}
            self.controller.observe(self, rec)
            nxt = self.controller.next_action(self)
            reached = self._reached(metric, self.C)
            self.done = reached or isinstance(nxt, Done)
            rec.update(phase_end=not isinstance(nxt, Train), schedule_done=self.done, target_reached=reached,
                       reason=None if isinstance(nxt, Train) else ("metric target reached" if reached and not
                                                                    isinstance(nxt, Done) else nxt.reason),
                       trained=self.trained_schedule())
            self.history.append(rec)
            if self.averager is not None:
                self.averager.observe(rec, self.model)
            if progress is not None:
                progress(self, rec)
            yield rec
        if self.averager is not None and self.history and not self.history[-1].get("averaged"):
            rec = self._averaged_record()
            if rec is not None:
                self.history.append(rec)
                if progress is not None:
                    progress(self, rec)
                yield rec

    def averaged_model(self):
        """The model with the averaged weights (``weight_averaging``), or None."""
        sd = self.averager.averaged() if self.averager is not None else None
        m = self.model
        return None if sd is None else load_model(m.model_name, m.geometry, m.model_kwargs, sd, self.device)

    def _averaged_record(self) -> dict | None:
        """The averaged model, evaluated: its own record after the schedule's last one."""
        t0, model = time.perf_counter(), self.averaged_model()
        if model is None:
            return None
        own, self.model = self.model, model
        try:
            metric, val_loss = self._evaluate()
        finally:
            self.model = own
        self.counters["wall_time_s"] += time.perf_counter() - t0
        return {**self.history[-1], "val_metric": metric, "val_loss": val_loss, **self.counters, "averaged": True}

    def _apply_hyperparameters(self) -> None:
        """Put this run's own optimizer settings over a copied optimizer state (PBT's explore)."""
        c = self.cfg
        self.lr_sched.base_lrs = [c.lr for _ in self.opt.param_groups]
        for g, f in zip(self.opt.param_groups, self.lr_sched.lr_lambdas):
            g.update(initial_lr=c.lr, lr=c.lr * f(self.lr_sched.last_epoch), weight_decay=c.weight_decay,
                     betas=c.betas)

    # ------------------------------------------------------------------ state
    def identity(self) -> dict:
        """What a saved state must agree on to continue here (beyond the schedule)."""
        return {"config": {**self.cfg.training_identity(), "precision": self.precision},
                "frontend": self.data.fe.key(), "features": self.data.feature_dtype,
                "norm": [float(v) for v in (self.data.mean, self.data.std)], "num_classes": self.data.num_classes,
                "steps_per_epoch": self.steps_per_epoch}

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION, "config": self.cfg.to_dict(), "identity": self.identity(),
            "controller": {"name": self.controller.name, "describe": self.controller.describe(),
                           "state": self.controller.state_dict()},
            "phases": [dict(p) for p in self.phases], "step": self.step, "done": self.done,
            "counters": dict(self.counters), "history": [dict(r) for r in self.history],
            "model_name": self.model.model_name, "model_kwargs": dict(self.model.model_kwargs),
            "geometry": self.model.geometry.as_dict(), "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(), "lr_sched": self.lr_sched.state_dict(),
            "rng": self.rng.state_dict(), "precision": self.precision,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "averaging": self.averager.state_dict() if self.averager is not None else None,
        }

    def load_state_dict(self, s: dict, exploit: bool = False) -> None:
        """Continue from a saved state: this run's own (resume) or one whose trained history the
        controller accepts as a prefix of its own (fork). Anything else is refused, saying why.

        ``exploit=True`` is population-based training's copy of a better member: the weights, optimizer
        state and history are the donor's, the hyperparameters this run's own (its LR from here on)."""
        if s.get("version") != STATE_VERSION:
            raise CheckpointError(f"checkpoint format {s.get('version')} is not {STATE_VERSION}; it was written "
                                  f"by another c2f-search version, start a new run")
        mine = self.identity()
        if exploit:  # only what shapes the model and the data must agree
            arch = ("model", "model_kwargs")
            mine = {**mine, "config": {k: mine["config"][k] for k in arch}}
            s = {**s, "identity": {**s["identity"], "config": {k: s["identity"]["config"][k] for k in arch}}}
        for key in mine:
            if s["identity"][key] != mine[key]:
                diff = _first_difference(s["identity"][key], mine[key])
                raise CheckpointError(f"the checkpoint was trained with another {key}: {diff}")
        theirs = parse_schedule(s["config"]["schedule"]).method
        why = (f"it compresses by {theirs}, this run by {self.method.name}" if theirs != self.method.name
               else self.controller.accepts(s["phases"], s["step"], self.cfg.lr_schedule == "cosine"))
        if why is not None:
            raise CheckpointError(f"cannot continue {self.controller.describe()} from the checkpoint of "
                                  f"{s['controller']['describe']}: {why}")
        if s["controller"]["name"] == self.controller.name and s["controller"]["describe"] == self.controller.describe():
            self.controller.load_state_dict(s["controller"]["state"])
        self.phases, self.step = [dict(p) for p in s["phases"]], s["step"]
        self.phases[-1]["planned"] = self.controller.planned_steps(len(self.phases) - 1)
        self.counters, self.history = dict(s["counters"]), [dict(r) for r in s["history"]]
        if hasattr(self.controller, "labels"):  # a forked history is labelled as this schedule sees it
            for k, r in enumerate(self.history):
                r.update(self.controller.labels(r))
                r["target_reached"] = self._reached(r["val_metric"], r["C"])
                r["schedule_done"] = r["schedule_done"] or r["target_reached"]
                if r["schedule_done"] and k < len(self.history) - 1:
                    raise CheckpointError(f"{self.controller.describe()} would have stopped at step {r['step']}, "
                                          f"before the checkpoint's step {self.step}")
        # copies: a state taken from a live run (a fork, a probe) must not share its tensors
        self.model = load_model(s["model_name"], Geometry(**s["geometry"]), s["model_kwargs"],
                                {k: v.clone() for k, v in s["model"].items()}, self.device)
        self._new_optimizer()
        self.opt.load_state_dict(copy.deepcopy(s["optimizer"]))
        self.lr_sched.load_state_dict(s["lr_sched"])
        self.rng.load_state_dict(s["rng"])
        if self.scaler is not None and s["scaler"]:
            self.scaler.load_state_dict(s["scaler"])
        if self.averager is not None:
            self.averager.load_state_dict(s.get("averaging"))
        if exploit:
            self._apply_hyperparameters()
        last = self.history[-1] if self.history else None
        self.done = bool(last and last["step"] == self.step and last["schedule_done"])


def _first_difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return f"{k} = {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
    return f"{a!r} in the checkpoint, {b!r} now"


def _mixup(x, y, frac: float, beta):
    """Mix a random `frac` of the batch with a shuffled partner, lambda ~ `beta` = Beta(10, 10) (AST)."""
    B = x.shape[0]
    lam = beta.sample((B,))
    lam = torch.where(torch.rand(B, device=x.device) < frac, lam, torch.ones_like(lam))
    j = torch.randperm(B, device=x.device)
    return (lam.view(-1, 1, 1) * x + (1 - lam.view(-1, 1, 1)) * x[j],
            lam.view(-1, 1) * y + (1 - lam.view(-1, 1)) * y[j])
