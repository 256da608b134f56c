"""The input pipeline of one run: everything between the feature store and a prepared batch on the
device. It owns the features at each C, the batch order and sampling weights (a pure function of
seed, epoch and step, so nothing but the step is carried in a checkpoint), the prefetcher, and the
device-side preparation: the method's transform (pooling), SpecAugment, normalization, AST's noise
and mixup. Each phase names its method (a schedule's phases may mix them), so every call takes the phase's
method with its C. Everything random draws from the process-wide generators, which the run installs around
its own work (``rng.RunRNG``), in a fixed order per batch: SpecAugment, noise, mixup."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..data.frontend import add_noise, normalize, spec_augment
from ..data.prefetch import PinnedRing, Prefetcher, host_batches
from ..data.sets import balanced_weights
from ..validate import check_batch_size

PREFETCH = 4  # batches the loader gathers ahead


def steps_per_epoch(cfg, data) -> int:
    """Optimizer steps per epoch: every step trains a full batch (the last partial one is dropped,
    so each phase has one static shape)."""
    fe = data.fe
    n = len(data.features("train", fe.frame_shift_ms, fe.target_length).kept)
    check_batch_size(cfg.batch_size, n)
    return n // cfg.batch_size


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of `n` training clips in `epoch` of a run seeded `seed` (without balanced sampling): a loop of
    one's own that draws it trains on the batches ``c2f-search train`` does (examples/own_loop.py)."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch))


class InputPipeline:
    def __init__(self, cfg, data, device: torch.device, norm: tuple[float, float] | None = None):
        """`norm` (mean, std) as a saved state recorded it; None: the data's (computed from its training set)."""
        self.cfg, self.data, self.device = cfg, data, device
        self._norm = norm
        self._perm_epoch, self._perm, self._weights, self._beta = None, None, None, None

    @property
    def norm(self) -> tuple[float, float]:
        if self._norm is None:
            self._norm = (self.data.mean, self.data.std)
        return self._norm

    def features(self, split: str, C: int, method):
        fe = self.data.fe
        return self.data.features(
            split, method.frame_shift(fe.frame_shift_ms, C), method.feature_length(fe.target_length, C)
        )

    def _full(self, split: str):
        """The features at full resolution (C = 1 reads the same for every method)."""
        fe = self.data.fe
        return self.data.features(split, fe.frame_shift_ms, fe.target_length)

    @property
    def n_train(self) -> int:
        return len(self._full("train").kept)

    # ------------------------------------------------------------------ order
    def batch_indices(self, step: int, steps_per_epoch: int) -> np.ndarray:
        """Data order is a pure function of (seed, data epoch, step): nothing to carry but the step."""
        epoch, b = divmod(step, steps_per_epoch)
        if self._perm_epoch != epoch:
            if self.cfg.balanced_sampling:  # AST's WeightedRandomSampler, drawn from (seed, epoch) alone
                g = epoch_generator(self.cfg.seed, epoch)
                order = torch.multinomial(self._clip_weights(), self.n_train, replacement=True, generator=g)
            else:
                order = epoch_order(self.cfg.seed, epoch, self.n_train)
            self._perm, self._perm_epoch = order.numpy(), epoch
        B = self.cfg.batch_size
        return self._perm[b * B : (b + 1) * B]

    def _clip_weights(self) -> torch.Tensor:
        if self._weights is None:
            self._weights = balanced_weights(self.data.targets("train", self._full("train")))
        return self._weights

    # ------------------------------------------------------------------ batches
    @contextmanager
    def train_batches(self, C: int, order: list, method):
        """Prepared training batches (x, y) of the index batches `order`, on the device."""
        feats = self.features("train", C, method)
        with self._prefetch(feats, self.data.targets("train", feats), order) as batches:
            yield (self._mixup(self.prepare(x, n, C, True, method), y) for x, n, y in batches)

    @contextmanager
    def eval_batches(self, split: str, C: int, batch: int, method):
        """Prepared batches (x, y) of `batch` clips, every clip of `split` in order."""
        feats = self.features(split, C, method)
        n = len(feats.kept)
        order = [np.arange(s, min(n, s + batch)) for s in range(0, n, batch)]
        with self._prefetch(feats, self.data.targets(split, feats), order) as batches:
            yield ((self.prepare(x, nf, C, False, method), y) for x, nf, y in batches)

    def _prefetch(self, feats, targets, order) -> Prefetcher:
        """On CUDA, rows are gathered into reused pinned buffers: those queued, one being gathered and one
        being copied are never the same."""
        ring = PinnedRing(PREFETCH + 3, pin=True) if self.device.type == "cuda" else None
        return Prefetcher(host_batches(feats, targets, order, ring), self.device, PREFETCH, ring=ring)

    def prepare(self, x, n, C: int, train: bool, method) -> torch.Tensor:
        """On the device: a fp16 store's batch to fp32, the method's transform, SpecAugment, normalization, noise."""
        cfg, scale = self.cfg, method.time_mask_scale(C)
        x = method.transform(x.float(), n, C)
        if train:
            x = spec_augment(x, cfg.freqm, cfg.timem // scale)
        x = normalize(x, *self.norm)
        return add_noise(x, scale) if train and cfg.noise else x

    def _mixup(self, x, y):
        if self.cfg.mixup <= 0:
            return x, y
        if self._beta is None:  # lambda drawn on the device, from the run's stream there
            ten = torch.tensor(10.0, device=self.device)
            # not validated: checking the constant parameters would read them back to the host (a sync)
            self._beta = torch.distributions.Beta(ten, ten, validate_args=False)
        return mixup(x, y, self.cfg.mixup, self._beta)


def mixup(x, y, frac: float, beta):
    """Mix a random `frac` of the batch with a shuffled partner, lambda ~ `beta` = Beta(10, 10) (AST)."""
    B = x.shape[0]
    lam = beta.sample((B,))
    lam = torch.where(torch.rand(B, device=x.device) < frac, lam, torch.ones_like(lam))
    j = torch.randperm(B, device=x.device)
    return (
        lam.view(-1, 1, 1) * x + (1 - lam.view(-1, 1, 1)) * x[j],
        lam.view(-1, 1) * y + (1 - lam.view(-1, 1)) * y[j],
    )
