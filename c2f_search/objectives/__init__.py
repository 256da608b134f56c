"""Objectives, one module each behind ``Objective`` (the contract, ``base.py``): ``supervised`` and
``masked-patch`` (SSAST pretraining)."""

from .base import OBJECTIVES, Objective, Scorer, get_objective, make_objective, register_objective

__all__ = ["Objective", "Scorer", "OBJECTIVES", "register_objective", "get_objective", "make_objective"]
