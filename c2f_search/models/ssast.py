"""SSAST (Gong et al. 2022): AST with DeiT's two prefix tokens, pretrained by masked patch modeling.

Pretraining (``masked_patch_loss``) replaces the embeddings of masked patches by a learned mask
embedding; two heads read the encoder's output at the masked positions: ``cpred`` scores each
masked patch against all masked patches of its clip (InfoNCE, SSAST's discriminative task) and
``gpred`` reconstructs it (MSE, generative); loss = InfoNCE + 10 MSE. Patches are 16 x 16 and the
targets are the normalized fbank pixels of each patch. With a patch method the kernel is stretched to
16 x 16C; its target is the patch averaged over time to 16 x 16, so both heads keep their shape.

Fine-tuning is AST's forward (mean of the two prefix tokens -> LayerNorm -> Linear); the pretraining
heads are then unused. The phase adapter is AST's: the same position embedding and patch kernel move.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import Geometry
from .ast import AST, PATCH, ASTFamily, make_builder
from .base import DEPTH, DROP_PATH, register_model

GENERATIVE_WEIGHT = 10.0  # SSAST's joint loss: InfoNCE + 10 x MSE
MASK_FRACTION = 400 / 512  # SSAST masks 400 of its 512 patches


class SSAST(AST):
    def __init__(self, geometry: Geometry, num_classes: int, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.0):
        super().__init__(
            geometry,
            num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            dist_token=True,
            drop_path_rate=drop_path_rate,
        )
        self.mask_embed = nn.Parameter(torch.empty(1, 1, embed_dim))
        nn.init.xavier_normal_(self.mask_embed)
        self.cpred = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, PATCH * PATCH))
        self.gpred = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, PATCH * PATCH))

    def patch_targets(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) input -> (B, N, 256) pixels of each token's patch, in token order (freq-major)."""
        x = x.unsqueeze(1)
        k = self.geometry.time_stretch
        if k > 1:  # a 16 x 16k patch, averaged over time to 16 x 16
            x = F.avg_pool2d(x, (1, k))
        return F.unfold(x, PATCH, stride=PATCH).transpose(1, 2)

    def masked_patch_loss(self, x: torch.Tensor, mask_index: torch.Tensor):
        """Joint SSAST loss and the masked-patch accuracy for masks `mask_index` (B, n) of token indices."""
        vit = self.vit
        target = self.patch_targets(x)
        tokens = vit.patch_embed(x.unsqueeze(1))
        B, N, D = tokens.shape
        mask = torch.zeros(B, N, 1, device=x.device, dtype=tokens.dtype).scatter_(1, mask_index.unsqueeze(-1), 1.0)
        tokens = tokens * (1 - mask) + mask * self.mask_embed
        h = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))))
        n = mask_index.shape[1]
        h = h[:, vit.num_prefix_tokens :].gather(1, mask_index.unsqueeze(-1).expand(-1, -1, D))
        t = target.gather(1, mask_index.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
        scores = t @ self.cpred(h).transpose(1, 2)  # (B, n targets, n predictions)
        labels = torch.arange(n, device=x.device).repeat(B)
        nce = F.cross_entropy(scores.reshape(B * n, n), labels)  # each target picks its own prediction
        mse = F.mse_loss(self.gpred(h), t)
        # SSAST's accuracy: per prediction, the target with the highest row-normalised score is its own
        acc = (scores.softmax(-1).argmax(1).reshape(-1) == labels).float().mean()
        return nce + GENERATIVE_WEIGHT * mse, acc


class SSASTFamily(ASTFamily):
    name = "ssast"
    settings = (DEPTH, DROP_PATH)
    pretraining_keys = ("mask_embed", "cpred.", "gpred.")


SSAST_FAMILY = SSASTFamily()


for _size in ("tiny", "base"):
    register_model(f"ssast-{_size}", SSAST_FAMILY)(make_builder(_size, SSAST))
