"""What a ``Run`` minimises and reports (``TrainConfig.objective``).

* ``supervised`` - CE or BCE on the labels; accuracy or mAP (``step.classification_loss``, ``Run.evaluate``).
* ``masked-patch`` - SSAST's self-supervised pretraining: cluster masks over the token grid, the
  model's ``masked_patch_loss`` (InfoNCE + 10 MSE); labels are ignored. Its validation metric is the
  masked-patch accuracy (how often a masked patch's prediction picks its own patch among the clip's
  masked patches): a proxy for downstream quality, higher is better.

The number of masked patches is given at full resolution (``mask_patches``, default SSAST's 400 of
512 = 78%) and scaled to each phase's token count: at C = 2 half the tokens, half the masks. SSAST's
own masking loop draws until it has its fixed count, which never ends when a phase has fewer tokens.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError
from .flops import masked_patch_flops, train_flops
from .step import ClassificationLoss

OBJECTIVES = ("supervised", "masked-patch")
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


class Supervised(ClassificationLoss):
    supervised = True

    def __init__(self, run):
        super().__init__(run.cfg.loss == "bce" or (run.cfg.loss == "auto" and run.data.multilabel))
        self.run = run

    @property
    def metric_name(self) -> str:
        return "mAP" if self.run.data.multilabel else "accuracy"

    def train_flops(self, model) -> int:
        return train_flops(model)


class MaskedPatch:
    supervised, metric_name = False, "masked_patch_accuracy"

    def __init__(self, run):
        from .checks import masked_patches
        self.run = run
        self.full_tokens, self.full_masked = masked_patches(run.cfg, run._model_kwargs(), run.full)

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

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(masked-patch accuracy, loss) on the validation clips, with the same masks at every evaluation of a phase."""
        from .train import EVAL_BATCH
        run, model = self.run, self.run.model
        model.eval()
        feats = run._features("val", run.C)
        n, k = len(feats.kept), self.masked(model)
        rng = np.random.default_rng([run.cfg.seed, run.C])
        hits = loss = 0.0
        for s in range(0, n, EVAL_BATCH):
            idx = np.arange(s, min(n, s + EVAL_BATCH))
            masks = cluster_masks(model.token_grid, k, len(idx), rng).to(run.device)
            batch_loss, batch_acc = model.masked_patch_loss(run._inputs(feats, idx, False), masks)[:2]
            hits, loss = hits + float(batch_acc) * len(idx), loss + float(batch_loss) * len(idx)
        run.counters["eval_flops"] += masked_patch_flops(model, k, backward=False) * n
        return hits / n, loss / n


def make_objective(run):
    return (MaskedPatch if run.cfg.objective == "masked-patch" else Supervised)(run)
