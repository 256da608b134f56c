"""Checks of a training setting against the data it trains on: one function per check, called by
``Run`` and, for every configuration a search may sample, by the search's driver before Ray starts."""
from __future__ import annotations

import math

from .errors import ConfigError, ScheduleError
from .geometry import Geometry
from .models import get_family


def check_geometry(cfg, fe, Cs) -> None:
    """The full-resolution input fits the model family and every C divides its time tokens."""
    family = get_family(cfg.model)
    g = family.time_granularity
    if fe.num_mel_bins < family.min_mel_bins:
        raise ConfigError("num_mel_bins", f"{fe.num_mel_bins} is fewer than the {family.min_mel_bins} that "
                                          f"{cfg.model} needs (its patch height); use at least {family.min_mel_bins}")
    if fe.target_length % g:
        raise ConfigError("target_length", f"{fe.target_length} frames is not a multiple of {g}, the time "
                                           f"granularity of {cfg.model}; use e.g. {math.ceil(fe.target_length / g) * g}")
    tokens = family.time_tokens(Geometry(fe.num_mel_bins, fe.target_length))
    for C in Cs:
        if tokens % C:
            ok = [c for c in (8, 4, 2) if tokens % c == 0]
            raise ScheduleError(f"C={C} does not divide the {tokens} time tokens of the full-resolution input "
                                f"({fe.target_length} frames / {g}); use C in {ok or [1]} or a --target-length "
                                f"that is a multiple of {g * C}")


def check_batch_size(batch_size: int, n_train: int) -> None:
    if n_train < batch_size:
        raise ConfigError("batch_size", f"{batch_size} is more than the {n_train} training clips; every step "
                                        f"trains a full batch, use at most {n_train}")


def masked_patches(cfg, model_kwargs: dict, full: Geometry) -> tuple[int, int]:
    """(patches, masked patches) of a masked-patch pretraining run at full resolution."""
    from .models.ssast import MASK_FRACTION
    from .transfer import build_for_phase
    model = build_for_phase(cfg.model, model_kwargs, "none", 1, full, device="meta")
    if not hasattr(model, "masked_patch_loss"):
        raise ConfigError("model", f"{cfg.model} cannot be pretrained by masked patch modeling; use ssast-tiny "
                                   f"or ssast-base")
    f, t = model.token_grid
    masked = cfg.mask_patches or max(1, round(MASK_FRACTION * f * t))
    if masked > f * t:
        raise ConfigError("mask_patches", f"{masked} is more than the {f * t} patches of the full-resolution "
                                          f"input ({f}x{t}); use at most {f * t}")
    return f * t, masked


def check_against_data(cfg, data) -> None:
    """What only the data decide: the batch against the training clips, and a pretraining run's
    masked patches against the token grid (the geometry: ``check_geometry``)."""
    fe = data.fe
    check_batch_size(cfg.batch_size, len(data.features("train", fe.frame_shift_ms, fe.target_length).kept))
    if cfg.objective == "masked-patch":
        masked_patches(cfg, {"num_classes": data.num_classes, **cfg.model_kwargs},
                       Geometry(fe.num_mel_bins, fe.target_length))
