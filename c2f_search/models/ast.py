"""AST (Gong et al. 2021) on timm's VisionTransformer: one input channel, non-square input.

Output = mean of the prefix tokens (cls, plus dist if enabled) -> LayerNorm -> Linear.
The family's phase adapter (``ASTFamily``) sits here, next to the model, as timm keeps a
family's resampling next to the family: position embeddings are resampled bilinearly to a
new token grid, and a stretched patch kernel moves as the compression method says. The forward takes
the indices of the tokens to keep (token dropping, PaSST's patchout), gathered after the position embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..compress import pi_resize
from ..errors import C2FError
from ..geometry import Capability, Geometry
from .base import DEPTH, DIST_TOKEN, DROP_PATH, STRIDE, ModelFamily, is_run_state, load_matching, register_model
from .layers import resample_grid_embed
from .pretrained import InitNotForFamily

PATCH = 16
WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


class AST(nn.Module):
    def __init__(
        self,
        geometry: Geometry,
        num_classes: int,
        embed_dim=192,
        depth=12,
        num_heads=3,
        dist_token=False,
        drop_path_rate=0.0,
        stride: int | None = None,
    ):
        super().__init__()
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import VisionTransformer

        k = geometry.time_stretch
        patch = (PATCH, PATCH * k)
        cls = VisionTransformerDistilled if dist_token else VisionTransformer
        self.vit = cls(
            img_size=geometry.input_size,
            patch_size=patch,
            in_chans=1,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
        )
        if stride is not None and stride != PATCH:  # overlapping patches (AST's stride 10) stretch with the patch
            self._set_stride((stride, stride * k))
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))

    def _set_stride(self, stride):
        """A strided patch conv and the larger token grid it gives."""
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

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; `keep` (B, K) token indices: only those patch tokens (and the prefix tokens) go through the
        encoder, chosen after the position embedding is added (token dropping; None: every token)."""
        if x.dim() == 3:  # (B, F, T) -> (B, 1, F, T)
            x = x.unsqueeze(1)
        vit = self.vit
        if keep is None:
            tokens = vit.forward_features(x)
        else:
            t = vit._pos_embed(vit.patch_embed(x))
            n = vit.num_prefix_tokens
            t = torch.cat([t[:, :n], t[:, n:].gather(1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))], 1)
            tokens = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(t))))
        return self.head(tokens[:, : vit.num_prefix_tokens].mean(1))


class ASTFamily(ModelFamily):
    name, time_granularity, min_mel_bins = "ast", PATCH, PATCH
    provides = frozenset({Capability.SHORTER_INPUT, Capability.STRETCHED_PATCH, Capability.TOKEN_DROP})
    settings = (DEPTH, DIST_TOKEN, STRIDE, DROP_PATH)

    def adapt_state_dict(self, sd, old, new, method):
        """Position embeddings resampled to the new token grid, the patch kernel resized; between a model with
        DeiT's distillation token and one without (SSAST -> AST at --init), the token moves as ``--init``
        of a DeiT file moves it (``_fit_prefix``)."""
        n_old, n_new = old.vit.num_prefix_tokens, new.vit.num_prefix_tokens
        pe = resample_grid_embed(sd["vit.pos_embed"], new.token_grid, old.token_grid, n_old)
        sd["vit.pos_embed"] = torch.cat([_fit_prefix(pe[:, :n_old], n_new), pe[:, n_old:]], 1)
        if hasattr(new.vit, "dist_token") and "vit.dist_token" not in sd:  # starts as the class token
            sd["vit.dist_token"] = sd["vit.cls_token"].clone()
        if not hasattr(new.vit, "dist_token"):
            sd.pop("vit.dist_token", None)
        key = "vit.patch_embed.proj.weight"  # resized only where the kernel's shape changes
        size = new.vit.patch_embed.proj.weight.shape[-2:]
        sd[key] = method.resize_kernel(sd[key], size)
        return sd

    def load_init(self, model: AST, path) -> None:
        """Start from a local file; nothing is downloaded. Three kinds are read:

        * a c2f-search checkpoint (``final.pt``, ``last.pt``): fine-tune a run of your own;
        * the official AST format (``module.v.*`` keys, e.g. ``audioset_10_10_0.4593.pth``);
        * a timm ViT/DeiT state dict (``.pth`` or ``.safetensors``): the RGB patch kernel is summed;
        * a Hugging Face AST folder (``save_pretrained``: ``config.json``, ``model.safetensors``), read as the
          official format.
        Position embeddings and the patch kernel move to this model's geometry; the classifier
        is kept only where the number of classes matches. A distillation token the model lacks is dropped.
        """
        from ..files import load_checkpoint
        from .hf_ast import is_hf_folder, read_hf_ast

        p = Path(path)
        if is_hf_folder(p):
            sd, grid, _ = read_hf_ast(p)
            return self._load_vit(model, sd, grid, path)
        if p.suffix == ".safetensors" and p.is_file():
            from safetensors.torch import load_file

            try:
                sd = load_file(str(p))
            except Exception as e:  # safetensors raises its own error types for damaged files
                raise C2FError(f"--init {path}: cannot read it as safetensors ({e})") from None
        else:
            sd = load_checkpoint(p)
        if is_run_state(sd):
            return self.init_from_run(model, sd, path)
        sd = sd.get("model", sd.get("state_dict", sd))
        if any(k.startswith("module.v.") for k in sd):  # official AST
            sd = {
                ("vit." + k[9:] if k.startswith("module.v.") else k.replace("module.mlp_head.", "head.")): v
                for k, v in sd.items()
                if k.startswith(("module.v.", "module.mlp_head."))
            }
            grid = _ast_grid(sd, path)
        elif "patch_embed.proj.weight" in sd:  # timm ViT / DeiT
            sd = {f"vit.{k}": v for k, v in sd.items() if not k.startswith(("head", "fc_norm"))}
            grid = None
        else:
            raise InitNotForFamily(
                f"--init {path}: not a c2f-search checkpoint, an official AST checkpoint "
                f"(module.v.* keys), a timm ViT/DeiT state dict or a Hugging Face AST folder"
            )
        self._load_vit(model, sd, grid, path)

    def _load_vit(self, model, sd, grid, path):
        vit = model.vit
        w = sd.get("vit.patch_embed.proj.weight")
        if w is None:
            raise C2FError(f"--init {path}: no patch embedding weights")
        if w.shape[1] != 1:  # RGB kernel of an ImageNet model
            w = w.sum(1, keepdim=True)
        sd["vit.patch_embed.proj.weight"] = pi_resize(w, vit.patch_embed.proj.weight.shape[-2:])
        if "vit.pos_embed" in sd:
            pe = sd["vit.pos_embed"]
            npt_src = 2 if "vit.dist_token" in sd else 1
            n = pe.shape[1] - npt_src
            if grid is None:
                side = int(round(n**0.5))
                grid = (side, n // side)
            body = resample_grid_embed(pe[:, npt_src:], model.token_grid, grid, 0)
            sd["vit.pos_embed"] = torch.cat([_fit_prefix(pe[:, :npt_src], vit.num_prefix_tokens), body], 1)
        if "vit.dist_token" in sd and not hasattr(vit, "dist_token"):
            sd.pop("vit.dist_token")
        # an ImageNet or AST encoder has no SSAST pretraining heads: those start fresh
        load_matching(model, sd, path, self.head, may_miss=("vit.dist_token", *self.pretraining_keys))


def _fit_prefix(prefix: torch.Tensor, n: int) -> torch.Tensor:
    """The position embeddings of `n` prefix tokens from another count: the distillation token's is dropped,
    or a missing one starts as the class token's."""
    if prefix.shape[1] < n:
        prefix = torch.cat([prefix, prefix[:, :1].expand(-1, n - prefix.shape[1], -1)], 1)
    return prefix[:, :n]


def _ast_grid(sd, path) -> tuple[int, int]:
    """The official AST token grid (f, t), e.g. 12 x 101 for 128 mel bins, 1024 frames, stride 10."""
    pe = sd.get("vit.pos_embed")
    if pe is None:
        raise C2FError(f"--init {path}: an AST checkpoint without position embeddings")
    n = pe.shape[1] - (2 if "vit.dist_token" in sd else 1)
    for fstride in (10, 16, *range(1, 16)):
        f = (128 - PATCH) // fstride + 1
        if n % f == 0:
            return f, n // f
    raise C2FError(f"--init {path}: cannot tell the token grid of its {n} position embeddings")


AST_FAMILY = ASTFamily()


def make_builder(size: str, cls=AST):
    """A builder of `cls` (AST or a subclass) at DeiT width `size`."""
    dim, heads = WIDTHS[size]

    def fn(geometry: Geometry, num_classes: int, depth: int = 12, **kw):
        return cls(geometry, num_classes, embed_dim=dim, depth=depth, num_heads=heads, **kw)

    fn.__doc__ = f"{cls.__name__} with DeiT-{size[0].upper()} width ({dim}, {heads} heads)."
    return fn


for _size in WIDTHS:
    register_model(f"ast-{_size}", AST_FAMILY)(make_builder(_size))
