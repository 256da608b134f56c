"""Coarse-to-fine in a user's own training loop (docs/own_loop.md): ``CoarseToFine`` walks a schedule step by
step and hands out, per step, what ``Run`` does at that step: the phase's batch transform (``Method.transform``),
the kept token indices of a token-dropping phase (``Method.keep_index``, drawn on the device from the global
generator, as ``Run`` draws them from its own), and at a transition the model moved by ``move_to_phase``, the
one rule ``Run`` moves it by. The optimizer and LR schedule are the user's: rebuilt at a transition by their
factory, or by them where ``Step.transition`` says so."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..compress import Method, get_method
from ..errors import C2FError, LoopMismatch, ScheduleError, UnmovableModel
from ..geometry import Capability, Geometry
from ..models import get_family
from ..models.flops import kept_tokens, train_flops
from ..models.phase import move_to_phase
from ..schedule import Schedule, parse_schedule
from ..schedule_file import SUFFIXES, ScheduleFile, read_schedule_file


@dataclass(frozen=True)
class Step:
    """One training step of the schedule."""

    index: int  # 0-based, over the whole schedule
    phase: int  # 0-based
    C: int
    method: Method
    transition: bool  # the first step of a phase after the first: the model moved, rebuild the optimizer
    frame_shift_ms: float  # the features of this phase: fbank frame shift (fshift changes it)
    feature_length: int  # ... and frames (cut or zero-padded)
    model: nn.Module  # the model to train at this step

    def transform(self, x: torch.Tensor, n_frames: torch.Tensor | None = None) -> torch.Tensor:
        """The phase's transform of a raw (B, F, T) fbank batch on its device (pooling); `n_frames`: each clip's
        real frames before zero padding (None: every frame is real)."""
        if n_frames is None:
            n_frames = torch.full((x.shape[0],), x.shape[-1], device=x.device)
        return self.method.transform(x, n_frames, self.C)

    def keep_index(self, batch: int, device) -> torch.Tensor | None:
        """The (batch, kept) token indices the model's forward takes (``model(x, keep=...)``) in a token-dropping
        phase, drawn from the global generator on `device`; None in every other phase."""
        if not self.method.drops_at(self.C):
            return None
        return self.method.keep_index(self.C, self.model.token_grid, batch, device)


class CoarseToFine:
    def __init__(
        self,
        schedule: str | Schedule | ScheduleFile | Path,
        model: nn.Module,
        steps_per_epoch: int,
        full: Geometry | None = None,
        optimizer_factory: Callable | None = None,
        frame_shift_ms: float | None = None,
    ):
        """`schedule`: a schedule text (``avgpool:2x3,1x7``), a ``Schedule`` or an exported file (.json, .yaml);
        `model`: one c2f-search builds (``create_model``, ``build_for_phase``) at full resolution or at the
        schedule's first phase, or a timm ``VisionTransformer`` built with ``dynamic_img_size=True``; `full`: the
        full-resolution input (default: the file's, else the model's, so a model built for the first phase
        needs it); `optimizer_factory(model)` returns an optimizer or (optimizer, LR scheduler), built now and
        again at every transition."""
        spec = _schedule_spec(schedule)
        self.schedule = spec.schedule if isinstance(spec, ScheduleFile) else spec
        self.file = spec if isinstance(spec, ScheduleFile) else None
        if self.schedule.is_adaptive:
            raise ScheduleError(
                f"{self.schedule}: a controller decides its phase lengths during a run; give fixed lengths, or "
                f"export the schedule a learned trial trained (c2f-search export DIR --trial ID)"
            )
        self.steps_per_epoch = _check_steps_per_epoch(steps_per_epoch, self.file)
        self.adapter = _adapter(model, self.schedule, self.file)
        self.full = full or (self.file.full if self.file else self.adapter.geometry(model))
        self.base_shift = frame_shift_ms or (self.file.base_frame_shift_ms if self.file else 10.0)
        self.phase_steps = self.schedule.phase_steps(self.steps_per_epoch)
        self.ends = [sum(self.phase_steps[: k + 1]) for k in range(len(self.phase_steps))]
        self.index, self.phase = 0, 0
        self.model = self.adapter.start(model, self.method, self.C, self.full)
        self.factory, self.optimizer, self.lr_scheduler = optimizer_factory, None, None
        self._rebuild_optimizer()

    C = property(lambda self: self.schedule.phases[self.phase].C)
    method = property(lambda self: get_method(self.schedule.phases[self.phase].method))
    total_steps = property(lambda self: self.ends[-1])
    done = property(lambda self: self.index >= self.total_steps)

    def _rebuild_optimizer(self) -> None:
        if self.factory is not None:
            made = self.factory(self.model)
            self.optimizer, self.lr_scheduler = made if isinstance(made, tuple) else (made, None)

    def step(self) -> Step:
        """The next training step; at the first step of a new phase the model moves (``self.model``) and the
        optimizer factory, if any, builds a fresh optimizer and LR schedule (``self.optimizer``)."""
        if self.done:
            raise C2FError(
                f"schedule {self.schedule} has {self.total_steps} steps at {self.steps_per_epoch} steps per epoch; "
                f"step {self.index + 1} was asked for: stop the loop when CoarseToFine.done"
            )
        transition = self.index == self.ends[self.phase]
        if transition:
            before = self.method
            self.phase += 1
            self.model = self.adapter.move(self.model, before, self.method, self.C, self.full)
            self._rebuild_optimizer()
        m = self.method
        s = Step(
            self.index,
            self.phase,
            self.C,
            m,
            transition,
            m.frame_shift(self.base_shift, self.C),
            m.feature_length(self.full.frames, self.C),
            self.model,
        )
        self.index += 1
        return s

    def step_flops(self, batch: int) -> int:
        """Training FLOPs of one step of `batch` clips in the current phase (forward and backward)."""
        return batch * self.adapter.train_flops(self.model, self.method, self.C)


def phase_fbank(step: Step, sample_rate: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0):
    """`fbank(wav) -> (num_mel_bins, feature_length)` for `step`'s phase: torchaudio's Kaldi fbank with AST's
    settings at the phase's frame shift (fshift), cut or zero-padded to its feature length, for a data pipeline
    that makes its own features."""
    from ..data.frontend import FrontEnd, fbank, fit_length

    fe = FrontEnd(sample_rate, num_mel_bins, step.frame_shift_ms, frame_length_ms, step.feature_length)

    def fn(wav: torch.Tensor) -> torch.Tensor:
        return fit_length(fbank(wav, fe), step.feature_length)[0].T

    return fn


def _schedule_spec(schedule):
    if isinstance(schedule, (Schedule, ScheduleFile)):
        return schedule
    if isinstance(schedule, Path) or (isinstance(schedule, str) and schedule.endswith(SUFFIXES)):
        return read_schedule_file(schedule)
    return parse_schedule(schedule)


def _check_steps_per_epoch(n, file: ScheduleFile | None) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LoopMismatch(f"steps_per_epoch must be a positive integer (batches per epoch), got {n!r}")
    if file is not None and n != file.steps_per_epoch:
        raise LoopMismatch(
            f"steps_per_epoch={n} disagrees with the schedule file's {file.steps_per_epoch} (its phases are "
            f"{file.schedule.phase_steps(file.steps_per_epoch)} steps): use the file's batch size and data, or "
            f"pass the schedule text {str(file.schedule)!r} to train it at {n} steps per epoch"
        )
    return n


# ------------------------------------------------------------------ models the API can move
class _Registered:
    """A model c2f-search builds: moved by its family's adapter, as ``Run`` moves it."""

    def geometry(self, model):
        return model.geometry

    def start(self, model, method, C, full):
        first = method.geometry(C, full)
        if model.geometry == first:
            return model
        if model.geometry != full:
            raise UnmovableModel(
                f"the model's input {model.geometry} is neither the full resolution {full} nor the first phase's "
                f"{first}: build it at one of them, or pass full=Geometry(...)"
            )
        return move_to_phase(model, method, method, C, full)

    def move(self, model, before, method, C, full):
        return move_to_phase(model, before, method, C, full)

    def train_flops(self, model, method, C):
        return train_flops(model, kept_tokens(model, method, C))


class _TimmViT:
    """A timm ``VisionTransformer`` built with ``dynamic_img_size=True``: a shorter input needs no weight to move
    (timm resamples its position embeddings per forward), so only methods that shorten the input apply."""

    provides = frozenset({Capability.SHORTER_INPUT})

    def geometry(self, model):
        return Geometry(*model.patch_embed.img_size)

    def start(self, model, method, C, full):
        return model

    def move(self, model, before, method, C, full):
        return model

    def train_flops(self, model, method, C):
        from torch.utils.flop_counter import FlopCounterMode

        g = method.geometry(C, self.geometry(model))
        meta = copy.deepcopy(model).to("meta")
        with FlopCounterMode(display=False) as fc:
            meta(torch.zeros((1, model.patch_embed.proj.in_channels, *g.input_size), device="meta")).sum().backward()
        return int(fc.get_total_flops())


@functools.cache
def _vit_class():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def _adapter(model, schedule: Schedule, file: ScheduleFile | None):
    """How `model` moves between phases; a model that cannot is refused here, in one line naming what is missing."""
    if getattr(model, "model_name", None) is not None and getattr(model, "geometry", None) is not None:
        family = get_family(model)
        if file is not None and type(get_family(file.model)) is not type(family):
            raise UnmovableModel(
                f"the schedule was searched with {file.model} ({get_family(file.model).name}), the model is "
                f"{model.model_name} ({family.name}): train a {get_family(file.model).name} model, or search "
                f"{family.name} schedules"
            )
        family.check_schedule(model.model_name, schedule)
        return _Registered()
    if isinstance(model, _vit_class()):
        if file is not None and get_family(file.model).name != "ast":
            raise UnmovableModel(
                f"the schedule was searched with {file.model} ({get_family(file.model).name}), the model is a "
                f"timm VisionTransformer: train a {get_family(file.model).name} model built by c2f-search"
            )
        if not getattr(model, "dynamic_img_size", False):
            raise UnmovableModel(
                "a timm VisionTransformer built without dynamic_img_size=True cannot take a shorter input: "
                "build it with timm.create_model(..., dynamic_img_size=True) or c2f_search.create_model"
            )
        for name in schedule.methods:
            missing = get_method(name).needs - _TimmViT.provides
            if missing:
                raise UnmovableModel(
                    f"a timm VisionTransformer cannot train {name!r}: it needs "
                    f"{' and '.join(c.value for c in missing)}; build the model with c2f_search.create_model, "
                    f"or use a schedule of avgpool, maxpool or fshift"
                )
        return _TimmViT()
    raise UnmovableModel(
        f"cannot move a {type(model).__name__} between phases: it has no model_name and geometry (a model "
        f"c2f_search.create_model builds) and is not a timm VisionTransformer"
    )
