"""``validate(cfg)``: the checks of a ``TrainConfig`` that need a registry (model, model settings,
compression method, transition, objective, weight averaging). ``TrainConfig`` itself checks types
and ranges only; every entry point (``Run``, the CLI, a search's driver, a recipe) calls this before
any work starts."""
from __future__ import annotations

from .averaging import parse_averaging
from .compress import get_method
from .config import TrainConfig
from .controllers import check_transition
from .errors import ConfigError, ScheduleError
from .models import MODELS
from .objectives import get_objective
from .schedule import parse_schedule


def validate(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, once every registry-backed setting names something that exists and fits."""
    if cfg.model not in MODELS:
        raise ConfigError("model", f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS.names())}")
    family = MODELS.get(cfg.model)[1]
    family.check_settings(cfg.model, cfg.model_kwargs)
    schedule = parse_schedule(cfg.schedule)
    family.check_schedule(cfg.model, schedule)
    objective = get_objective(cfg.objective)
    for k, p in enumerate(schedule.phases):
        if get_method(p.method).drops_at(p.C) and not objective.takes_token_drop:
            raise ScheduleError(f"phase {k + 1} ('{p.method}:{p}'): the {cfg.objective} objective cannot train with "
                                f"dropped tokens; use a method that shortens the input, e.g. fshift:{p}")
    if cfg.transition is not None:
        check_transition(cfg.transition)
    if cfg.weight_averaging is not None:
        parse_averaging(cfg.weight_averaging)
    objective.check(cfg)
    return cfg
