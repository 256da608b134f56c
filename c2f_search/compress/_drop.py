"""Token dropping (PaSST's patchout): the input and the model's token grid stay at full resolution, and a
training step sees a subset of the tokens, chosen after the position embedding is added, so no weight
changes shape and a checkpoint is a complete full-resolution model. Evaluation sees every token.

The kept count is static per phase (one compiled shape): n / C rounded to the nearest integer, halves
up, at least 1, so C need not divide the grid. The indices are drawn per batch on the device from the
generator the run installs (its own stream), with no host sync."""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from .base import Capability, Method


def kept_count(n: int, C: int) -> int:
    """n / C rounded to the nearest integer (halves up), at least 1."""
    return max(1, math.floor(n / C + 0.5))


def rounding(what: str, n: int, C: int) -> str:
    """How `n` `what` became the kept count at C, in words."""
    k = kept_count(n, C)
    how = "" if n % C == 0 else (", at least 1" if k == 1 and n / C < 0.5 else f", rounded to {k}")
    return f"keeps {k} of {n} {what} ({n}/{C} = {n / C:.4g}{how})"


def draw(batch: int, n: int, k: int, device) -> torch.Tensor:
    """(batch, k) distinct indices in [0, n), each row increasing, every k-subset equally likely."""
    return torch.rand(batch, n, device=device).topk(k, dim=1).indices.sort(dim=1).values


class TokenDrop(Method):
    """A method that drops tokens: the model keeps its geometry; subclasses say which tokens are kept."""

    needs = frozenset({Capability.TOKEN_DROP})

    def geometry(self, C, full):
        return full

    def kept_tokens(self, C, grid):
        return grid[0] * grid[1] if C == 1 else self._kept(C, *grid)

    def keep_index(self, C, grid, batch, device):
        return None if C == 1 else self._draw(C, *grid, batch, device)

    def describe_keep(self, C: int, grid: tuple[int, int]) -> str:
        """How many tokens phase C keeps of `grid` and how the count was rounded (the run header prints it)."""
        f, t = grid
        return (
            f"{self.name} C={C} {self._rounding(C, f, t)}: a training step sees {self.kept_tokens(C, grid)} of "
            f"the {f}x{t} = {f * t} tokens, evaluation all of them"
        )

    @abstractmethod
    def _kept(self, C: int, f: int, t: int) -> int: ...

    @abstractmethod
    def _draw(self, C: int, f: int, t: int, batch: int, device) -> torch.Tensor:
        """(batch, kept) flat token indices (freq-major, as the patch embedding orders them)."""

    @abstractmethod
    def _rounding(self, C: int, f: int, t: int) -> str: ...
