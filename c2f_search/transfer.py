"""Phase transitions: carry weights to the next phase's token grid."""
from __future__ import annotations

import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from .compress import geometry
from .compress.patch import resize_kernel
from .models import create_model
from .schedule import Phase


def build_for_phase(model_name: str, model_kwargs: dict, method: str, C: int, num_mel_bins: int,
                    target_length: int, patch: int = 16) -> nn.Module:
    """A fresh model whose input size and patch size fit phase C of `method`."""
    geo = geometry(method, C, num_mel_bins, target_length, patch)
    kw = {**model_kwargs, **geo}
    stride = model_kwargs.get("stride")
    if stride is not None:  # overlapping patches stretch with the patch along time
        kw["stride"] = (stride[0], stride[1] * (C if method.startswith("patch") else 1))
    return create_model(model_name, **kw)


def transfer_weights(model: nn.Module, from_phase: Phase, to_phase: Phase, method: str,
                     num_mel_bins: int, target_length: int) -> nn.Module:
    """Return a model for `to_phase` carrying every weight of `model` (built for `from_phase`).

    Position embeddings are resampled bilinearly to the new token grid (old_size is
    passed because grids are not square); patch methods move the kernel by PI or BL;
    everything else is copied. Loading is strict, so no parameter is lost.
    """
    kw = {k: v for k, v in model.model_kwargs.items() if k not in ("input_size", "patch_size", "init")}
    if "stride" in kw and kw["stride"] is not None and method.startswith("patch"):
        kw["stride"] = (kw["stride"][0], kw["stride"][1] // from_phase.C)
    new = build_for_phase(model.model_name, kw, method, to_phase.C, num_mel_bins, target_length)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    npt = model.vit.num_prefix_tokens
    old_grid, new_grid = model.token_grid, new.token_grid
    if old_grid != new_grid:
        sd["vit.pos_embed"] = resample_abs_pos_embed(
            sd["vit.pos_embed"], new_size=list(new_grid), old_size=list(old_grid),
            num_prefix_tokens=npt, interpolation="bilinear", antialias=False)
    key = "vit.patch_embed.proj.weight"
    new_k = tuple(new.vit.patch_embed.proj.weight.shape[-2:])
    if tuple(sd[key].shape[-2:]) != new_k:
        sd[key] = resize_kernel(sd[key], new_k, "pi" if method == "patch-pi" else "bl")
    new.load_state_dict(sd, strict=True)
    return new.to(next(model.parameters()).device)
