"""Training FLOPs per sample, counted with torch's FlopCounterMode on the meta device.

Counting runs on a meta-device copy with fused attention switched off, so the
attention matmuls are counted as explicit bmm ops on every platform (the CPU
fused-attention kernel has no FLOP formula) and nothing is computed for real.
"""
from __future__ import annotations

import functools
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models import create_model


def _meta_model(model_name: str, kwargs: dict):
    with torch.device("meta"):
        m = create_model(model_name, **{k: v for k, v in kwargs.items() if k != "init"})
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = False
    return m


@functools.lru_cache(maxsize=256)
def _count(model_name: str, kwargs_json: str, input_shape: tuple, backward: bool) -> int:
    m = _meta_model(model_name, json.loads(kwargs_json))
    m.train(backward)
    x = torch.zeros((1, *input_shape), device="meta")
    with FlopCounterMode(display=False) as fc:
        out = m(x)
        if backward:
            out.sum().backward()
    return int(fc.get_total_flops())


def _key(model) -> tuple[str, str, tuple]:
    kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.model_kwargs.items()}
    return model.model_name, json.dumps(kw, sort_keys=True), tuple(model.model_kwargs["input_size"])


def train_flops(model) -> int:
    """FLOPs of one training step (forward + backward) per sample for this phase's model."""
    name, kw, shape = _key(model)
    return _count(name, kw, shape, True)


def eval_flops(model) -> int:
    """FLOPs of one forward pass per sample."""
    name, kw, shape = _key(model)
    return _count(name, kw, shape, False)
