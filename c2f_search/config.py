"""``TrainConfig``: every training setting and its default, in one place. The CLI, the space
files and the Ray trainable all read their defaults from here. It parses the schedule (once: every later
reader takes ``cfg.schedule``, a ``Schedule``) and checks types and ranges only; the checks that need a
registry (model, method, transition, objective, averaging, model settings) are ``validate.validate``'s."""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields

from .errors import ConfigError
from .schedule import Schedule, parse_schedule

# settings a search space may search or fix (`fixed:` and `space:` keys)
SEARCHABLE = (
    "lr",
    "batch_size",
    "warmup_steps",
    "weight_decay",
    "freqm",
    "timem",
    "mixup",
    "lr_gamma",
    "lr_schedule",
    "seed",
    "mask_patches",
    "transition",
    "eval_every",
)
# settings a space may fix but not search: they change speed and numerics, not FLOPs
FIXED_ONLY = ("precision", "compile")
# how a run executes rather than what it trains: a resumed run may change it (precision changes the
# numerics, but a checkpoint moved from a CPU to a GPU should train at the GPU's)
EXECUTION = ("compile", "precision")
LR_SCHEDULES = ("step", "cosine")
LOSSES = ("auto", "ce", "bce")
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # numpy's legacy seeding and Optuna's samplers take 32 bits


@dataclass
class TrainConfig:
    schedule: Schedule  # given as text (METHOD:CxE,...) or a Schedule; parsed here, once
    model: str = "ast-tiny"
    model_kwargs: dict = field(default_factory=dict)  # depth, dist_token, stride, drop_path_rate
    init: str | None = None  # local pretrained file: timm/DeiT, official AST or a c2f-search checkpoint
    lr: float = 1e-4
    batch_size: int = 16
    weight_decay: float = 5e-7
    betas: tuple = (0.95, 0.999)
    warmup_steps: int = 20  # linear warmup at the start of every phase
    lr_schedule: str = "step"  # step: x lr_gamma at lr_milestones; cosine: to 0 at the phase's end
    lr_milestones: tuple = ()  # epochs from each phase start where lr *= lr_gamma
    lr_gamma: float = 0.5
    freqm: int = 0
    timem: int = 0  # at full resolution; scaled by the method's time-mask scale
    mixup: float = 0.0  # fraction of each batch mixed, lambda ~ Beta(10, 10)
    seed: int = 0
    metric_target: float | None = None  # budget mode: stop at the first final-phase eval reaching it
    transition: str | None = None  # how auto phases end: plateau:patience=2,delta=0.002 or probe:steps=10
    eval_every: str | None = None  # N steps or Xepoch; default: every epoch (and at every phase end)
    loss: str = "auto"  # auto: BCE for multi-label data, CE otherwise; AST's Speech Commands recipe uses BCE
    balanced_sampling: bool = False  # AST's: clips drawn with replacement, weight = sum of 1000/(count+0.01)
    noise: bool = False  # AST's Speech Commands noise: uniform noise and a roll of up to 10 frames
    weight_averaging: str | None = None  # from:E (AST) or top:K (HTS-AT) final-phase evaluations
    objective: str = "supervised"  # or masked-patch: SSAST's self-supervised pretraining
    mask_patches: int | None = None  # masked patches at full resolution (default SSAST's 400/512)
    precision: str = "auto"  # auto: bf16 on CUDA that has it (else fp16), fp32 on CPU; resolved by Run
    compile: bool | None = None  # torch.compile per phase (CUDA graphs on CUDA); None: on for CUDA only

    def __post_init__(self):
        if isinstance(self.schedule, str):
            self.schedule = parse_schedule(self.schedule)
        elif not isinstance(self.schedule, Schedule):
            raise ConfigError("schedule", f"must be a schedule like fshift:4x5,1x15, got {self.schedule!r}")
        self.betas, self.lr_milestones = tuple(self.betas), tuple(self.lr_milestones)
        self.model_kwargs = dict(self.model_kwargs)
        _check(self)

    def to_dict(self) -> dict:
        """Plain values (the schedule as text), as config.json and a checkpoint record them."""
        d = asdict(self)
        d["schedule"], d["betas"], d["lr_milestones"] = str(self.schedule), list(self.betas), list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting; known: {', '.join(sorted(known))}")
        return cls(**d)

    def build_kwargs(self, num_classes: int) -> dict:
        """The model builder's keyword arguments for data with `num_classes` classes."""
        return {"num_classes": num_classes, **self.model_kwargs}

    def training_identity(self) -> dict:
        """What determines the trajectory apart from the schedule: runs that agree on it can share a prefix."""
        d = self.to_dict()
        for k in ("schedule", "metric_target", *EXECUTION):
            d.pop(k)
        return d


def defaults() -> dict:
    """Field -> default value."""
    return {
        f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
        for f in fields(TrainConfig)
        if f.name != "schedule"
    }


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_eval_every(text, steps_per_epoch: int | None = None) -> int | None:
    """``--eval-every``: ``N`` steps, ``Nstep(s)`` or ``Xepoch(s)`` (fractions of an epoch allowed), in steps;
    without `steps_per_epoch` (not known yet) the form is checked and None returned."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(steps?|epochs?)?\s*", str(text))
    if not m or (m.group(2) or "step").startswith("step") and "." in m.group(1):
        raise ConfigError("eval_every", f"{text!r}: write N steps (e.g. 50) or a fraction of an epoch (e.g. 0.25epoch)")
    if float(m.group(1)) <= 0:
        raise ConfigError("eval_every", f"{text!r}: evaluate every N >= 1 steps or every X > 0 epochs")
    if steps_per_epoch is None:
        return None
    n = float(m.group(1)) * (steps_per_epoch if (m.group(2) or "").startswith("epoch") else 1)
    if round(n) < 1:
        raise ConfigError("eval_every", f"{text!r} is less than one step ({steps_per_epoch} steps per epoch)")
    return round(n)


def _check(c: TrainConfig) -> None:
    for name in ("model", "objective"):
        if not isinstance(getattr(c, name), str):
            raise ConfigError(name, f"must be a name, got {getattr(c, name)!r}")
    if not isinstance(c.model_kwargs, dict):
        raise ConfigError("model_kwargs", f"must be a mapping of model settings, got {c.model_kwargs!r}")
    if not (_number(c.lr) and c.lr > 0):
        raise ConfigError("lr", f"must be a finite number > 0, got {c.lr!r} (AST uses 1e-4 to 1e-5)")
    for name in ("batch_size",):
        v = getattr(c, name)
        if not (_int(v) and v >= 1):
            raise ConfigError(name, f"must be an integer >= 1, got {v!r}")
    for name in ("warmup_steps", "freqm", "timem", "seed"):
        v = getattr(c, name)
        if not (_int(v) and v >= 0):
            raise ConfigError(name, f"must be an integer >= 0, got {v!r}")
    if c.seed > MAX_SEED:
        raise ConfigError("seed", f"must be at most {MAX_SEED} (numpy's and Optuna's seeds are 32-bit), got {c.seed}")
    if not (_number(c.weight_decay) and c.weight_decay >= 0):
        raise ConfigError("weight_decay", f"must be a finite number >= 0, got {c.weight_decay!r}")
    if len(c.betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in c.betas):
        raise ConfigError("betas", f"must be two numbers in [0, 1), got {c.betas!r}")
    if c.lr_schedule not in LR_SCHEDULES:
        raise ConfigError("lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}, got {c.lr_schedule!r}")
    if not all(_number(m) and m > 0 for m in c.lr_milestones) or list(c.lr_milestones) != sorted(c.lr_milestones):
        raise ConfigError("lr_milestones", f"must be increasing epochs > 0, got {list(c.lr_milestones)}")
    if not (_number(c.lr_gamma) and c.lr_gamma > 0):
        raise ConfigError("lr_gamma", f"must be a finite number > 0, got {c.lr_gamma!r}")
    if not (_number(c.mixup) and 0 <= c.mixup <= 1):
        raise ConfigError("mixup", f"must be a fraction of the batch in [0, 1], got {c.mixup!r}")
    if c.metric_target is not None and not (_number(c.metric_target) and 0 <= c.metric_target <= 1):
        raise ConfigError("metric_target", f"accuracy and mAP lie in [0, 1], got {c.metric_target!r}")
    if c.eval_every is not None:
        c.eval_every = str(c.eval_every)
        parse_eval_every(c.eval_every)
    if c.precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    if c.compile is not None and not isinstance(c.compile, bool):
        raise ConfigError("compile", f"must be true or false, got {c.compile!r}")
    if c.init is not None and not isinstance(c.init, str):
        raise ConfigError("init", f"must be a path, got {c.init!r}")
    if c.loss not in LOSSES:
        raise ConfigError("loss", f"must be one of {', '.join(LOSSES)}, got {c.loss!r}")
    for name in ("balanced_sampling", "noise"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(name, f"must be true or false, got {getattr(c, name)!r}")
    if c.mask_patches is not None and not (_int(c.mask_patches) and c.mask_patches >= 1):
        raise ConfigError("mask_patches", f"must be an integer >= 1, got {c.mask_patches!r}")


AVERAGING_MODES = ("from", "top")


def parse_averaging(text: str) -> tuple[str, float]:
    mode, _, n = str(text).partition(":")
    try:
        value = float(n) if mode == "from" else int(n)
    except ValueError:
        value = None
    if mode not in AVERAGING_MODES or value is None or not math.isfinite(value) or value < (0 if mode == "from" else 1):
        raise ConfigError(
            "weight_averaging",
            f"{text!r}: write from:E (every final-phase evaluation from epoch E "
            f"on, AST) or top:K (the K best, HTS-AT uses top:15)",
        )
    return mode, value
