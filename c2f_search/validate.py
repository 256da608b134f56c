"""``validate(cfg)``: the checks of a ``TrainConfig`` that need a registry (model, model settings,
compression method, transition, objective, weight averaging). ``TrainConfig`` itself checks types
and ranges only; every entry point (``Run``, the CLI, a search's driver, a recipe) calls this before
any work starts. ``check_against_data`` adds what only the data decide, called by ``Run`` and, for every
configuration a search may sample, by the search's driver before Ray starts."""

from __future__ import annotations

from .compress import get_method
from .config import TrainConfig, parse_averaging
from .controllers import check_transition
from .errors import ConfigError, ScheduleError
from .geometry import Geometry
from .models import create_model, get_family
from .objectives import get_objective


def validate(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, once every registry-backed setting names something that exists and fits."""
    family = get_family(cfg.model)
    family.check_settings(cfg.model, cfg.model_kwargs)
    schedule = cfg.schedule
    family.check_schedule(cfg.model, schedule)
    objective = get_objective(cfg.objective)
    for k, p in enumerate(schedule.phases):
        if get_method(p.method).drops_at(p.C) and not objective.takes_token_drop:
            raise ScheduleError(
                f"phase {k + 1} ('{p.method}:{p}'): the {cfg.objective} objective cannot train with "
                f"dropped tokens; use a method that shortens the input, e.g. fshift:{p}"
            )
    if cfg.transition is not None:
        check_transition(cfg.transition)
    if cfg.weight_averaging is not None:
        mode, value = parse_averaging(cfg.weight_averaging)
        total = None if schedule.is_adaptive else schedule.total_epochs
        if mode == "from" and total is not None and value >= total:
            raise ConfigError(
                "weight_averaging",
                f"from:{value:g} starts at or after the schedule's end ({total:g} epochs), so no evaluation would "
                f"be averaged; give from:E with E below {total:g}",
            )
    objective.check(cfg)
    return cfg


def check_steps(cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Every fixed phase is at least one optimizer step, and so is ``eval_every``, at this many steps per epoch."""
    from .config import parse_eval_every

    for k, p in enumerate(cfg.schedule.phases):
        if p.epochs is not None and p.epochs * steps_per_epoch < 0.5:  # rounds to no step at all
            raise ScheduleError(
                f"phase {k + 1} ({p.C}x{p.epochs:g}) is less than one optimizer step ({steps_per_epoch} steps per "
                f"epoch); give every phase at least {1 / steps_per_epoch:.3g} epochs"
            )
    if cfg.eval_every is not None:
        parse_eval_every(cfg.eval_every, steps_per_epoch)


def check_batch_size(batch_size: int, n_train: int) -> None:
    if n_train < batch_size:
        raise ConfigError(
            "batch_size",
            f"{batch_size} is more than the {n_train} training clips; every step "
            f"trains a full batch, use at most {n_train}",
        )


def masked_patches(cfg, model_kwargs: dict, full: Geometry) -> tuple[int, int]:
    """(patches, masked patches) of a masked-patch pretraining run at full resolution."""
    from .models.ssast import MASK_FRACTION

    model = create_model(cfg.model, geometry=full, device="meta", **model_kwargs)
    if not hasattr(model, "masked_patch_loss"):
        raise ConfigError(
            "model", f"{cfg.model} cannot be pretrained by masked patch modeling; use ssast-tiny or ssast-base"
        )
    f, t = model.token_grid
    masked = cfg.mask_patches or max(1, round(MASK_FRACTION * f * t))
    if masked > f * t:
        raise ConfigError(
            "mask_patches",
            f"{masked} is more than the {f * t} patches of the full-resolution input ({f}x{t}); use at most {f * t}",
        )
    return f * t, masked


def check_against_data(cfg, data) -> None:
    """What only the data decide: the batch against the training clips, and a pretraining run's
    masked patches against the token grid (the geometry: ``ModelFamily.check_geometry``)."""
    fe = data.fe
    n = len(data.features("train", fe.frame_shift_ms, fe.target_length).kept)
    check_batch_size(cfg.batch_size, n)
    check_steps(cfg, n // cfg.batch_size)
    for name, size, what in (("freqm", fe.num_mel_bins, "mel bins"), ("timem", fe.target_length, "frames")):
        if getattr(cfg, name) > size:
            raise ConfigError(
                name, f"{getattr(cfg, name)} is wider than the input's {size} {what}; use at most {size} (AST: 48, 192)"
            )
    if cfg.objective == "masked-patch":
        masked_patches(cfg, cfg.build_kwargs(data.num_classes), Geometry(fe.num_mel_bins, fe.target_length))
