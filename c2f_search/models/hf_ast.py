"""Hugging Face AST folders (``ASTForAudioClassification.save_pretrained``: ``config.json`` and
``model.safetensors``) as the official AST format's ``vit.*`` keys, so that they load as ``module.v.*``
checkpoints do. Two key layouts exist: transformers 4's (``encoder.layer.N.attention.attention.query``, the
layout the published AudioSet checkpoints are stored in) and transformers 5's (``layers.N.attention.q_proj``);
both load. The separate query, key and value projections become timm's fused ``qkv``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import C2FError

MODEL_TYPE = "audio-spectrogram-transformer"
PREFIX = "audio_spectrogram_transformer."
# (transformers 4 | transformers 5 key, relative to a layer) -> timm's, relative to vit.blocks.N
LAYER_KEYS = {
    "attention.attention.query": "q",
    "attention.q_proj": "q",
    "attention.attention.key": "k",
    "attention.k_proj": "k",
    "attention.attention.value": "v",
    "attention.v_proj": "v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
TOP_KEYS = {
    "embeddings.cls_token": "vit.cls_token",
    "embeddings.distillation_token": "vit.dist_token",
    "embeddings.position_embeddings": "vit.pos_embed",
    "embeddings.patch_embeddings.projection.weight": "vit.patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "vit.patch_embed.proj.bias",
    "layernorm.weight": "vit.norm.weight",
    "layernorm.bias": "vit.norm.bias",
}
HEAD_KEYS = {"classifier.layernorm": "head.0", "classifier.dense": "head.1"}
LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")


def is_hf_folder(path) -> bool:
    return Path(path).is_dir() and all((Path(path) / f).is_file() for f in ("config.json", "model.safetensors"))


def read_hf_ast(path) -> tuple[dict, tuple[int, int], dict]:
    """(state dict in ``vit.*``/``head.*`` keys, its token grid (f, t), the model settings it was built with:
    depth, stride, dist_token) of the Hugging Face AST folder `path`."""
    folder = Path(path)
    config = _config(folder)
    sd = _tensors(folder)
    out, qkv = {}, {}
    for key, value in sd.items():
        name = key.removeprefix(PREFIX)
        if name in TOP_KEYS:
            out[TOP_KEYS[name]] = value
        elif m := LAYER.fullmatch(name):
            n, part, kind = m.groups()
            to = LAYER_KEYS.get(part)
            if to is None:
                raise C2FError(f"--init {path}: unknown key {key} in an AST folder; is it an AST checkpoint?")
            if to in "qkv":
                qkv.setdefault((n, kind), {})[to] = value
            else:
                out[f"vit.blocks.{n}.{to}.{kind}"] = value
        elif (head := name.rpartition(".")[0]) in HEAD_KEYS:
            out[f"{HEAD_KEYS[head]}.{name.rpartition('.')[2]}"] = value
        else:
            raise C2FError(f"--init {path}: unknown key {key} in an AST folder; is it an AST checkpoint?")
    for (n, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise C2FError(f"--init {path}: layer {n} lacks a query, key or value projection")
        out[f"vit.blocks.{n}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    try:
        fstride, tstride = int(config.get("frequency_stride", 10)), int(config.get("time_stride", 10))
        grid = (
            (int(config.get("num_mel_bins", 128)) - 16) // fstride + 1,
            (int(config.get("max_length", 1024)) - 16) // tstride + 1,
        )
        depth = int(config.get("num_hidden_layers", 12))
    except (TypeError, ValueError, ZeroDivisionError):
        raise C2FError(
            f"--init {path}: config.json's strides, num_mel_bins, max_length or num_hidden_layers are not numbers"
        ) from None
    pe = out.get("vit.pos_embed")
    if pe is None or pe.shape[1] - 2 != grid[0] * grid[1]:
        raise C2FError(
            f"--init {path}: its position embeddings do not match the {grid[0]} x {grid[1]} token grid its "
            f"config.json gives (num_mel_bins, max_length and strides)"
        )
    settings = {
        "depth": depth,
        "dist_token": True,
        "stride": fstride if fstride == tstride else None,
    }
    return out, grid, settings


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise C2FError(f"--init {folder}: config.json cannot be read ({str(e)[:120]})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind != MODEL_TYPE:
        arch = ", ".join(config.get("architectures") or []) if isinstance(config, dict) else ""
        raise C2FError(
            f"--init {folder}: a Hugging Face folder of {kind or 'an unknown model'}"
            f"{f' ({arch})' if arch else ''}, not an Audio Spectrogram Transformer ({MODEL_TYPE}); give an "
            f"ASTForAudioClassification folder"
        )
    return config


def _tensors(folder: Path) -> dict:
    f = folder / "model.safetensors"
    if not f.is_file():
        raise C2FError(f"--init {folder}: no model.safetensors beside config.json (save it with safe_serialization)")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise C2FError(
            f"--init {folder}: reading a Hugging Face folder needs safetensors: pip install 'c2f-search[hf]'"
        ) from None
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise C2FError(f"--init {f}: cannot read it as safetensors, it is truncated or damaged ({e})") from None
