"""Multi-phase (coarse-to-fine) training of one schedule, without Ray.

``Run`` trains step by step and yields one record per evaluation point: every
epoch boundary and every phase end. Its ``state_dict`` is the full training state
(weights, optimizer, LR schedule, RNG, data position, cumulative counters), so a
run restored from any record continues exactly as if it had not stopped.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy, multilabel_average_precision

from . import data as D
from .compress import compress, fshift, needs_frame_shift
from .flops import eval_flops, train_flops
from .frontend import FrontEnd, normalize, spec_augment
from .models import create_model
from .schedule import Schedule, ScheduleError, parse_schedule
from .transfer import build_for_phase, transfer_weights

STATE_VERSION = 1


@dataclass
class TrainConfig:
    schedule: str
    model: str = "ast-tiny"
    model_kwargs: dict = field(default_factory=dict)  # e.g. depth, dist_token, stride, init
    lr: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 5e-7
    betas: tuple = (0.95, 0.999)
    warmup_steps: int = 0
    lr_milestones: tuple = ()  # epochs from each phase start where lr *= lr_gamma
    lr_gamma: float = 0.5
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0  # fraction of each batch mixed, lambda ~ Beta(10, 10)
    seed: int = 0
    metric_target: float | None = None  # budget mode: stop at the first eval reaching it

    def __post_init__(self):
        self.betas, self.lr_milestones = tuple(self.betas), tuple(self.lr_milestones)
        for name in ("lr", "batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


class NonFiniteLoss(RuntimeError):
    """Training diverged (loss is NaN or infinite)."""


class Data:
    """Train/val clip sets, the front end, normalization and lazily extracted features."""

    def __init__(self, train: D.ClipSet, val: D.ClipSet, fe: FrontEnd, norm=None, cache_dir=None,
                 skip_bad=False, progress=False):
        if train.classes != val.classes:
            raise D.DataError(f"{val.name}: its classes differ from {train.name}'s; use one class_labels_indices.csv")
        self.train, self.val, self.fe = train, val, fe
        self.cache_dir, self.skip_bad, self.progress = cache_dir, skip_bad, progress
        self._feats: dict = {}
        self.num_classes, self.multilabel = len(train.classes), train.multilabel or val.multilabel
        self.mean, self.std = norm if norm is not None else D.norm_stats(self.features("train", fe.frame_shift_ms))

    @classmethod
    def from_specs(cls, train: str, val: str | None = None, labels=None, task="auto", skip_bad=False,
                   norm=None, cache_dir="auto", progress=False, **frontend) -> "Data":
        tr = D.resolve(train, "train", labels, task, skip_bad)
        va = D.resolve(val or train, "val", labels, task, skip_bad, classes=tr.classes)
        if cache_dir == "auto":
            cache_dir = D.builtin.cache_root() / "features"
        return cls(tr, va, D.default_frontend(train, **frontend), norm, cache_dir, skip_bad, progress)

    def features(self, split: str, shift_ms: float) -> D.Features:
        key = (split, shift_ms)
        if key not in self._feats:
            C = round(shift_ms / self.fe.frame_shift_ms)
            target = fshift.target_length(self.fe.target_length, C)
            self._feats[key] = D.extract(getattr(self, split), self.fe, shift_ms, target, self.skip_bad,
                                         self.cache_dir, self.progress)
        return self._feats[key]

    def targets(self, split: str, shift_ms: float) -> torch.Tensor:
        return getattr(self, split).targets[torch.tensor(self.features(split, shift_ms).kept)]

    def bad_report(self) -> list[tuple[str, str]]:
        seen = dict(self.train.bad + self.val.bad)
        for f in self._feats.values():
            seen.update(dict(f.bad))
        return sorted(seen.items())


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Run:
    def __init__(self, cfg: TrainConfig, data: Data, device="auto", state: dict | None = None):
        self.cfg, self.data = cfg, data
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.schedule: Schedule = parse_schedule(cfg.schedule)
        fe = data.fe
        self.schedule.check_grid(fe.target_length // 16)
        if fe.target_length % 16:
            raise ScheduleError(f"target length {fe.target_length} must be a multiple of the patch size 16")
        n_train = len(data.features("train", fe.frame_shift_ms).kept)
        self.steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        steps = self.schedule.phase_steps(self.steps_per_epoch)
        self.bounds = np.cumsum([0] + steps).tolist()
        self.total_steps = self.bounds[-1]
        for p in self.schedule.phases:  # extract every phase's features up front (progress bars here)
            for split in ("train", "val"):
                data.features(split, self._shift(p.C))
        seed_everything(cfg.seed)
        self.phase, self.step, self.done = 0, 0, False
        self.counters = {"train_flops": 0.0, "eval_flops": 0.0, "train_time_s": 0.0, "wall_time_s": 0.0}
        self.history: list[dict] = []
        self.on_step = None  # optional callback after each optimizer step (progress bars)
        self.model = build_for_phase(cfg.model, {"num_classes": data.num_classes, **cfg.model_kwargs},
                                     self.schedule.method, self.C, fe.num_mel_bins, fe.target_length).to(self.device)
        self._new_optimizer()
        if state is not None:
            self.load_state_dict(state)

    # ------------------------------------------------------------------ geometry
    @property
    def C(self) -> int:
        return self.schedule.phases[self.phase].C

    def _shift(self, C: int) -> float:
        return needs_frame_shift(self.schedule.method, C, self.data.fe.frame_shift_ms)

    def _new_optimizer(self) -> None:
        """Fresh Adam and LR schedule: the paper resets both at every phase."""
        c = self.cfg
        self.opt = torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay, betas=c.betas)
        spe, ms, g, wu = self.steps_per_epoch, c.lr_milestones, c.lr_gamma, c.warmup_steps

        def factor(s: int) -> float:
            warm = min(1.0, (s + 1) / wu) if wu > 0 else 1.0
            return warm * g ** sum(s >= m * spe for m in ms)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

    def _transition(self) -> None:
        old, new = self.schedule.phases[self.phase], self.schedule.phases[self.phase + 1]
        fe = self.data.fe
        self.model = transfer_weights(self.model, old, new, self.schedule.method, fe.num_mel_bins, fe.target_length)
        self.phase += 1
        self._new_optimizer()

    # ------------------------------------------------------------------ data
    def _batch_indices(self, step: int) -> np.ndarray:
        """Data order is a pure function of (seed, data epoch, step): nothing to carry but the step."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if getattr(self, "_perm_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            n = len(self.data.features("train", self.data.fe.frame_shift_ms).kept)
            self._perm, self._perm_epoch = torch.randperm(n, generator=g).numpy(), epoch
        B = self.cfg.batch_size
        return self._perm[b * B:(b + 1) * B]

    def _inputs(self, split: str, idx, train: bool) -> torch.Tensor:
        method, C = self.schedule.method, self.C
        feats = self.data.features(split, self._shift(C))
        x, n = feats.batch(idx)
        x = compress(method, C, x.to(self.device, non_blocking=True), n)
        if train:
            scale = C if method in ("fshift", "avgpool", "maxpool") else 1  # time axis is C times shorter
            x = spec_augment(x, self.cfg.freqm, self.cfg.timem // scale)
        return normalize(x, self.data.mean, self.data.std)

    # ------------------------------------------------------------------ train / eval
    def _loss(self, logits, y):
        if self.data.multilabel:
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.cross_entropy(logits, y)

    def _train_until(self, stop: int) -> float:
        self.model.train()
        targets = self.data.targets("train", self._shift(self.C))
        flops = train_flops(self.model)
        losses = []
        for _ in range(stop - self.step):
            idx = self._batch_indices(self.step)
            x, y = self._inputs("train", idx, True), targets[idx].to(self.device)
            if self.cfg.mixup > 0:
                x, y = _mixup(x, y, self.cfg.mixup)
            loss = self._loss(self.model(x), y)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} at step {self.step} (phase {self.phase + 1}, C={self.C}); "
                                    f"lower --lr or check the data")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.lr_sched.step()
            self.step += 1
            self.counters["train_flops"] += flops * len(idx)
            losses.append(loss.item())
            if self.on_step is not None:
                self.on_step()
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        shift = self._shift(self.C)
        n = len(self.data.features("val", shift).kept)
        outs = []
        for s in range(0, n, 256):
            outs.append(self.model(self._inputs("val", np.arange(s, min(n, s + 256)), False)).float().cpu())
        logits, y = torch.cat(outs), self.data.targets("val", shift)
        self.counters["eval_flops"] += eval_flops(self.model) * n
        if self.data.multilabel:
            return float(multilabel_average_precision(torch.sigmoid(logits), y.int(), num_labels=y.shape[1], average="macro"))
        return float(multiclass_accuracy(logits, y.argmax(1), num_classes=y.shape[1], average="micro"))

    @property
    def metric_name(self) -> str:
        return "mAP" if self.data.multilabel else "accuracy"

    def records(self, progress=None) -> Iterator[dict]:
        """Train to the end (or the metric target), yielding a record at each evaluation point."""
        while not self.done:
            t0 = time.perf_counter()
            if self.step == self.bounds[self.phase + 1]:
                self._transition()
            next_epoch = (self.step // self.steps_per_epoch + 1) * self.steps_per_epoch
            stop = min(next_epoch, self.bounds[self.phase + 1])
            t1 = time.perf_counter()
            loss = self._train_until(stop)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.counters["train_time_s"] += time.perf_counter() - t1
            metric = self.evaluate()
            self.counters["wall_time_s"] += time.perf_counter() - t0
            target = self.cfg.metric_target
            reached = target is not None and metric >= target
            self.done = reached or self.step == self.total_steps
            rec = {
                "schedule": str(self.schedule), "method": self.schedule.method, "phase": self.phase + 1,
                "C": self.C, "epoch": self.step / self.steps_per_epoch, "step": self.step,
                "train_loss": loss, "val_metric": metric, "metric_name": self.metric_name,
                **self.counters, "phase_end": self.step == self.bounds[self.phase + 1],
                "schedule_done": self.done, "target_reached": reached,
            }
            self.history.append(rec)
            if progress is not None:
                progress(self, rec)
            yield rec

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "version": STATE_VERSION, "config": asdict(self.cfg), "schedule": str(self.schedule),
            "phase": self.phase, "step": self.step, "done": self.done, "counters": dict(self.counters),
            "history": list(self.history), "norm": (self.data.mean, self.data.std),
            "model_name": self.model.model_name,
            "model_kwargs": {k: v for k, v in self.model.model_kwargs.items() if k != "init"},
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "lr_sched": self.lr_sched.state_dict(), "rng": rng,
        }

    def load_state_dict(self, s: dict) -> None:
        if s.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint version {s.get('version')} is not {STATE_VERSION}")
        if s["schedule"] != str(self.schedule):
            raise ValueError(f"checkpoint is for schedule {s['schedule']}, not {self.schedule}")
        self.phase, self.step, self.done = s["phase"], s["step"], s["done"]
        self.counters, self.history = dict(s["counters"]), list(s["history"])
        self.model = create_model(s["model_name"], **s["model_kwargs"]).to(self.device)
        self.model.load_state_dict(s["model"])
        self._new_optimizer()
        self.opt.load_state_dict(s["optimizer"])
        self.lr_sched.load_state_dict(s["lr_sched"])
        rng = s["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _mixup(x, y, frac: float):
    """Mix a random `frac` of the batch with a shuffled partner, lambda ~ Beta(10, 10) (AST)."""
    B = x.shape[0]
    lam = torch.distributions.Beta(10.0, 10.0).sample((B,)).to(x.device)
    lam = torch.where(torch.rand(B, device=x.device) < frac, lam, torch.ones_like(lam))
    j = torch.randperm(B, device=x.device)
    return (lam.view(-1, 1, 1) * x + (1 - lam.view(-1, 1, 1)) * x[j],
            lam.view(-1, 1) * y + (1 - lam.view(-1, 1)) * y[j])


# ---------------------------------------------------------------------- checkpoint files
def save_checkpoint(state: dict, path) -> Path:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=False)
