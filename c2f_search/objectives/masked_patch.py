"""Masked patch: SSAST's self-supervised pretraining. Cluster masks over the token grid, the model's
``masked_patch_loss`` (InfoNCE + 10 MSE); labels are ignored. The metric is the masked-patch accuracy
(how often a masked patch's prediction picks its own patch among the clip's masked patches): a proxy
for downstream quality, higher is better.

The number of masked patches is given at full resolution (``mask_patches``, default SSAST's 400 of
512 = 78%) and scaled to each phase's token count: at C = 2 half the tokens, half the masks. SSAST's
own masking loop draws until it has its fixed count, which never ends when a phase has fewer tokens.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..flops import masked_patch_flops
from . import Objective, Scorer, register_objective

CLUSTER_SIZES = (3, 4, 5)  # SSAST masks square clusters of 3 to 5 patches a side


def cluster_masks(grid: tuple[int, int], n: int, batch: int, rng: np.random.Generator) -> torch.Tensor:
    """(batch, n) sorted token indices of a (freq, time) grid, masked in square clusters."""
    f, t = grid
    if not 1 <= n <= f * t:
        raise ConfigError("mask_patches", f"cannot mask {n} of the {f * t} patches of a {f}x{t} token grid")
    out = np.empty((batch, n), np.int64)
    for b in range(batch):
        k = int(rng.choice(CLUSTER_SIZES))
        chosen = np.zeros((f, t), bool)
        while chosen.sum() < n:  # ends: every draw masks at least one patch and n fits the grid
            r, c = int(rng.integers(f)), int(rng.integers(t))
            chosen[r:r + k, c:c + k] = True
        idx = np.flatnonzero(chosen)
        out[b] = np.sort(rng.choice(idx, n, replace=False))  # exactly n, none favoured
    return torch.from_numpy(out)


class _MaskedPatchScores(Scorer):
    """The same masks at every evaluation of a phase; sums stay on the device until ``result``."""

    def __init__(self, objective: "MaskedPatch", model, C: int):
        self.model, self.k = model, objective.masked(model)
        self.rng = np.random.default_rng([objective.cfg.seed, C])
        self.n, self.hits, self.loss = 0, 0.0, 0.0

    def add(self, x, y):
        masks = cluster_masks(self.model.token_grid, self.k, x.shape[0], self.rng).to(x.device)
        loss, acc = self.model.masked_patch_loss(x, masks)[:2]
        self.hits = self.hits + acc.double() * x.shape[0]
        self.loss = self.loss + loss.double() * x.shape[0]
        self.n += x.shape[0]

    def result(self):
        return float(self.hits) / self.n, float(self.loss) / self.n


@register_objective
class MaskedPatch(Objective):
    name, supervised, metric_name = "masked-patch", False, "masked_patch_accuracy"

    @classmethod
    def check(cls, cfg):
        if cfg.mixup > 0:
            raise ConfigError("mixup", "pretraining has no labels to mix; use 0")

    def __init__(self, cfg, data, full):
        from ..checks import masked_patches
        super().__init__(cfg, data, full)
        self.full_tokens, self.full_masked = masked_patches(cfg, cfg.build_kwargs(data.num_classes), full)

    def masked(self, model) -> int:
        """Masks for this phase's token grid: the full-resolution count scaled by the token ratio."""
        f, t = model.token_grid
        return max(1, round(self.full_masked * f * t / self.full_tokens))

    def extra(self, model, x):
        """This step's masks, drawn on the host (outside a compiled step) from the run's own stream, so
        forks and resumes draw the same."""
        seed = int(torch.randint(2 ** 62, ()))
        idx = cluster_masks(model.token_grid, self.masked(model), x.shape[0], np.random.default_rng(seed))
        return idx.to(x.device)

    def forward_loss(self, model, x, y, extra):
        return model.masked_patch_loss(x, extra)[0]

    def train_flops(self, model) -> int:
        return masked_patch_flops(model, self.masked(model), backward=True)

    def eval_flops(self, model) -> int:
        return masked_patch_flops(model, self.masked(model), backward=False)

    def scorer(self, model, C):
        return _MaskedPatchScores(self, model, C)
