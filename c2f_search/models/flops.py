"""Training FLOPs per sample, counted with torch's FlopCounterMode on the meta device.

Counting runs on a meta-device copy with fused attention switched off, so the attention
matmuls are counted as explicit bmm ops on every platform (the CPU fused-attention kernel
has no FLOP formula) and nothing is computed for real.
"""

from __future__ import annotations

import functools
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..geometry import Geometry
from .base import create_model


@functools.lru_cache(maxsize=256)
def _count(
    model_name: str, kwargs_json: str, geometry: Geometry, backward: bool, masked: int = 0, kept: int | None = None
) -> int:
    m = create_model(model_name, geometry=geometry, device="meta", **json.loads(kwargs_json))
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = False
    m.train(backward)
    x = torch.zeros((1, *geometry.input_size), device="meta")
    with FlopCounterMode(display=False) as fc:
        if masked:  # masked patch modeling: the encoder, both heads and both losses on `masked` patches
            out = m.masked_patch_loss(x, torch.arange(masked, device="meta")[None])[0]
        elif kept is not None:  # token dropping: the patch embedding sees every patch, the encoder `kept` tokens
            out = m(x, keep=torch.arange(kept, device="meta")[None])
        else:
            out = m(x)
        if backward:
            out.sum().backward()
    return int(fc.get_total_flops())


def _key(model) -> tuple:
    return model.model_name, json.dumps(model.model_kwargs, sort_keys=True, default=list), model.geometry


def train_flops(model, kept: int | None = None) -> int:
    """FLOPs of one training step (forward + backward) per sample for this phase's model; `kept`: the tokens
    a token-dropping phase keeps (attention and every linear layer counted at that many)."""
    return _count(*_key(model), True, 0, kept)


def kept_tokens(model, method, C: int) -> int | None:
    """The tokens a training step of phase C keeps where `method` drops tokens there; None: every token."""
    return method.kept_tokens(C, model.token_grid) if method.drops_at(C) else None


def eval_flops(model) -> int:
    """FLOPs of one forward pass per sample."""
    return _count(*_key(model), False)


def masked_patch_flops(model, masked: int, backward: bool) -> int:
    """FLOPs per sample of SSAST's pretraining step (or its evaluation) with `masked` masked patches."""
    return _count(*_key(model), backward, masked)
