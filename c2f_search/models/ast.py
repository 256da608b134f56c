"""AST (Gong et al. 2021) on timm's VisionTransformer: 1-channel, non-square input.

Output = mean of the prefix tokens (cls, plus dist if enabled) -> LayerNorm -> Linear.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from ._registry import register_model

WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


class AST(nn.Module):
    def __init__(self, num_classes: int, input_size=(128, 1024), patch_size=(16, 16), stride=None,
                 embed_dim=192, depth=12, num_heads=3, dist_token=False, drop_path_rate=0.0, init=None):
        super().__init__()
        cls = VisionTransformerDistilled if dist_token else VisionTransformer
        self.vit = cls(img_size=tuple(input_size), patch_size=tuple(patch_size), in_chans=1, num_classes=0,
                       global_pool="token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                       drop_path_rate=drop_path_rate)
        if stride is not None and tuple(stride) != tuple(patch_size):
            self._set_stride(tuple(stride))
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
        if init:
            load_init(self, init)

    def _set_stride(self, stride):
        """Overlapping patches (AST's stride 10): a strided conv and a larger token grid."""
        pe = self.vit.patch_embed
        k = pe.proj.kernel_size
        pe.proj = nn.Conv2d(1, pe.proj.out_channels, kernel_size=k, stride=stride)
        H, W = pe.img_size
        pe.grid_size = ((H - k[0]) // stride[0] + 1, (W - k[1]) // stride[1] + 1)
        pe.num_patches = pe.grid_size[0] * pe.grid_size[1]
        npt = self.vit.num_prefix_tokens
        self.vit.pos_embed = nn.Parameter(torch.randn(1, npt + pe.num_patches, self.vit.embed_dim) * 0.02)

    @property
    def token_grid(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (B, F, T) -> (B, 1, F, T)
            x = x.unsqueeze(1)
        tokens = self.vit.forward_features(x)
        return self.head(tokens[:, : self.vit.num_prefix_tokens].mean(1))


def load_init(model: AST, path) -> None:
    """Initialise the backbone from a local timm/DeiT checkpoint; nothing is downloaded.

    The RGB patch kernel is summed over channels and resized (PI) to this model's
    patch; position embeddings are resampled bilinearly to this model's grid.
    """
    from pathlib import Path

    from timm.layers import resample_patch_embed

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--init {path}: no such file; give a local timm/DeiT checkpoint (.pth or .safetensors)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(p))
    else:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        sd = sd.get("model", sd.get("state_dict", sd))
    vit = model.vit
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        raise ValueError(f"--init {path}: no 'patch_embed.proj.weight'; is it a timm ViT/DeiT checkpoint?")
    if w.shape[1] != 1:
        sd["patch_embed.proj.weight"] = w.sum(1, keepdim=True)
    k = vit.patch_embed.proj.weight.shape[-2:]
    if sd["patch_embed.proj.weight"].shape[-2:] != k:
        sd["patch_embed.proj.weight"] = resample_patch_embed(sd["patch_embed.proj.weight"], list(k),
                                                             interpolation="bilinear", antialias=False)
    if "pos_embed" in sd:
        npt_src = 2 if "dist_token" in sd else 1
        pe = sd["pos_embed"]
        n_src = pe.shape[1] - npt_src
        side = int(round(n_src ** 0.5))
        prefix = pe[:, :npt_src]
        grid = resample_abs_pos_embed(pe[:, npt_src:], new_size=list(vit.patch_embed.grid_size),
                                      old_size=[side, side], num_prefix_tokens=0,
                                      interpolation="bilinear", antialias=False)
        npt = vit.num_prefix_tokens
        if prefix.shape[1] < npt:
            prefix = torch.cat([prefix, prefix[:, :1].expand(-1, npt - prefix.shape[1], -1)], 1)
        sd["pos_embed"] = torch.cat([prefix[:, :npt], grid], 1)
    if "dist_token" in sd and not hasattr(vit, "dist_token"):
        sd.pop("dist_token")
    sd = {k: v for k, v in sd.items() if not k.startswith(("head", "fc_norm"))}
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith("head")]
    if bad or unexpected:
        raise ValueError(f"--init {path}: checkpoint does not fit {model.model_name if hasattr(model, 'model_name') else 'the model'}"
                         f" (missing {bad[:5]}, unexpected {list(unexpected)[:5]}); pick a matching --model width")


def _make(size):
    dim, heads = WIDTHS[size]

    def fn(num_classes: int, depth: int = 12, **kw) -> AST:
        return AST(num_classes, embed_dim=dim, depth=depth, num_heads=heads, **kw)
    fn.__doc__ = f"AST with DeiT-{size[0].upper()} width ({dim}, {heads} heads)."
    return fn


for _size in WIDTHS:
    register_model(f"ast-{_size}")(_make(_size))
