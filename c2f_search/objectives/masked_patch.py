"""Masked patch: SSAST's self-supervised pretraining. Cluster masks over the token grid, the model's
``masked_patch_loss`` (InfoNCE + 10 MSE); labels are ignored. The metric is the masked-patch accuracy
(how often a masked patch's prediction picks its own patch among the clip's masked patches): a proxy
for downstream quality, higher is better.

The number of masked patches is given at full resolution (``mask_patches``, default SSAST's 400 of
512 = 78%) and scaled to each phase's token count: at C = 2 half the tokens, half the masks. SSAST's
own masking loop draws until it has its fixed count, which never ends when a phase has fewer tokens.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models.flops import masked_patch_flops
from .base import Objective, Scorer, register_objective

CLUSTER_SIZES = (3, 4, 5)  # SSAST masks square clusters of 3 to 5 patches a side


def cluster_masks(
    grid: tuple[int, int], n: int, batch: int, device="cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """(batch, n) sorted token indices of a (freq, time) grid, masked in square clusters as SSAST does:
    a cluster size k in 3..5 per clip, k x k clusters at random corners until at least n patches are
    covered, then n of the covered ones, none favoured. Drawn with torch ops on `device` (from
    `generator`, or the default one there), so a step on a GPU never waits for the host.

    Each cell's first covering draw is found with one scatter over 2 f t candidate corners; the n-th
    smallest of those is where SSAST's loop would stop. In the rare case that 2 f t corners cover fewer than
    n cells (n close to f t), the rest are taken at random among the uncovered cells."""
    f, t = grid
    if not 1 <= n <= f * t:
        raise ConfigError("mask_patches", f"cannot mask {n} of the {f * t} patches of a {f}x{t} token grid")
    draws, kmax = 2 * f * t, max(CLUSTER_SIZES)
    rand = dict(device=device, generator=generator)
    k = torch.tensor(CLUSTER_SIZES, device=device)[torch.randint(len(CLUSTER_SIZES), (batch,), **rand)]
    r = torch.randint(f, (batch, draws), **rand)
    c = torch.randint(t, (batch, draws), **rand)
    d = torch.arange(kmax, device=device)
    rows, cols = r[..., None] + d, c[..., None] + d  # (B, draws, kmax)
    ok_r = (d < k[:, None, None]) & (rows < f)
    ok_c = (d < k[:, None, None]) & (cols < t)
    cell = rows[..., :, None] * t + cols[..., None, :]  # (B, draws, kmax, kmax)
    cell = torch.where(ok_r[..., :, None] & ok_c[..., None, :], cell, f * t)  # outside: a spare cell
    order = torch.arange(draws, device=device).view(1, draws, 1, 1).expand_as(cell)
    first = torch.full((batch, f * t + 1), draws, device=device, dtype=torch.long)
    first = first.scatter_reduce(1, cell.reshape(batch, -1), order.reshape(batch, -1), "amin")[:, : f * t]
    stop = first.kthvalue(n, dim=1, keepdim=True).values  # the draw at which n cells are covered
    score = torch.rand((batch, f * t), **rand)  # among the covered cells, n at random
    score = torch.where(first <= stop, score + 1, score)  # covered first; uncovered only to make up n
    return score.topk(n, dim=1).indices.sort(dim=1).values


class _MaskedPatchScores(Scorer):
    """The same masks at every evaluation of a phase; sums stay on the device until ``result``."""

    def __init__(self, objective: MaskedPatch, model, C: int):
        self.model, self.k, self.seed = model, objective.masked(model), objective.cfg.seed * 1_000_003 + C
        self.generator, self.n, self.hits, self.loss = None, 0, 0.0, 0.0

    def add(self, x, y):
        if self.generator is None:
            self.generator = torch.Generator(x.device).manual_seed(self.seed)
        masks = cluster_masks(self.model.token_grid, self.k, x.shape[0], x.device, self.generator)
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
        from ..validate import masked_patches

        super().__init__(cfg, data, full)
        self.full_tokens, self.full_masked = masked_patches(cfg, cfg.build_kwargs(data.num_classes), full)

    def masked(self, model) -> int:
        """Masks for this phase's token grid: the full-resolution count scaled by the token ratio."""
        f, t = model.token_grid
        return max(1, round(self.full_masked * f * t / self.full_tokens))

    def extra(self, model, x):
        """This step's masks, drawn on the device (outside the compiled step) from the run's own stream
        there, so forks and resumes draw the same and the host never waits."""
        return cluster_masks(model.token_grid, self.masked(model), x.shape[0], x.device)

    def forward_loss(self, model, x, y, extra):
        return model.masked_patch_loss(x, extra)[0]

    def train_flops(self, model) -> int:
        return masked_patch_flops(model, self.masked(model), backward=True)

    def eval_flops(self, model) -> int:
        return masked_patch_flops(model, self.masked(model), backward=False)

    def scorer(self, model, C):
        return _MaskedPatchScores(self, model, C)
