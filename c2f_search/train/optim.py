"""The optimizer and LR schedule of one phase, built by one factory: the paper resets both at every
phase. Adam (fused where torch has the kernel), linear warmup over each phase's first steps, then AST's
step decay at epochs from the phase start, or a cosine to 0 at the phase's planned end."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .step import adam


def phase_optimizer(cfg, params, device: torch.device, steps_per_epoch: int, planned: int | None):
    """(Adam, LambdaLR) for one phase whose length is `planned` steps (None: decided on the way)."""
    opt = adam(params, cfg.lr, cfg.weight_decay, cfg.betas, device)
    if cfg.lr_schedule == "cosine" and planned is None:
        raise ConfigError(
            "lr_schedule",
            "cosine needs each phase's length up front; this controller decides it on the way, use lr_schedule step",
        )
    ms, g, wu = cfg.lr_milestones, cfg.lr_gamma, cfg.warmup_steps

    def factor(s: int) -> float:
        warm = min(1.0, (s + 1) / wu) if wu > 0 else 1.0
        if cfg.lr_schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(s, planned) / max(1, planned)))
        return warm * g ** sum(s >= m * steps_per_epoch for m in ms)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def apply_hyperparameters(cfg, opt, lr_sched) -> None:
    """Put `cfg`'s optimizer settings over a copied optimizer state (PBT's explore)."""
    lr_sched.base_lrs = [cfg.lr for _ in opt.param_groups]
    for g, f in zip(opt.param_groups, lr_sched.lr_lambdas):
        g.update(initial_lr=cfg.lr, lr=cfg.lr * f(lr_sched.last_epoch), weight_decay=cfg.weight_decay, betas=cfg.betas)
