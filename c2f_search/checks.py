"""Checks of a training setting against the data it trains on: one function per check, called by
``Run`` and, for every configuration a search may sample, by the search's driver before Ray starts."""
from __future__ import annotations

from .errors import ConfigError
from .geometry import Geometry
from .models import create_model


def check_batch_size(batch_size: int, n_train: int) -> None:
    if n_train < batch_size:
        raise ConfigError("batch_size", f"{batch_size} is more than the {n_train} training clips; every step "
                                        f"trains a full batch, use at most {n_train}")


def masked_patches(cfg, model_kwargs: dict, full: Geometry) -> tuple[int, int]:
    """(patches, masked patches) of a masked-patch pretraining run at full resolution."""
    from .models.ssast import MASK_FRACTION
    model = create_model(cfg.model, geometry=full, device="meta", **model_kwargs)
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
    masked patches against the token grid (the geometry: ``ModelFamily.check_geometry``)."""
    fe = data.fe
    check_batch_size(cfg.batch_size, len(data.features("train", fe.frame_shift_ms, fe.target_length).kept))
    if cfg.objective == "masked-patch":
        masked_patches(cfg, cfg.build_kwargs(data.num_classes), Geometry(fe.num_mel_bins, fe.target_length))
