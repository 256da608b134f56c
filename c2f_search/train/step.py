"""One optimizer step of one phase, built not to wait for the host: the forward and loss under the
run's autocast, compiled once per phase (CUDA graphs on CUDA), a GradScaler for fp16, fused Adam,
and the loss handed back as a device tensor. ``Run`` trains with it and ``bench/gpu_step.py`` times it."""

from __future__ import annotations

import logging
import sys

import torch
import torch.nn as nn

from ..errors import NonFiniteLoss
from .precision import autocast


def adam(params, lr, weight_decay, betas, device: torch.device) -> torch.optim.Adam:
    """Fused Adam where torch has the kernel: one launch for every parameter, and it takes a
    GradScaler's inf check on the device instead of asking the host."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=device.type in ("cuda", "cpu"))


class _ForwardLoss(nn.Module):
    """The objective's forward and loss under autocast: what is compiled (an objective draws anything
    random, e.g. SSAST's masks, on the host beforehand: ``objective.extra``)."""

    def __init__(self, model, objective, precision, device):
        super().__init__()
        self.model, self.objective, self.precision, self.device = model, objective, precision, device

    def forward(self, x, y, extra):
        with autocast(self.precision, self.device):
            return self.objective.forward_loss(self.model, x, y, extra).float()


def allow_recompiles(entries: int = 64) -> None:
    """Every phase shape (and batch size, precision) is one entry of the one compiled ``_ForwardLoss``, and a
    process may train many: torch's limits (8 entries per function) are raised to `entries`. Past them
    Dynamo runs the new shapes eagerly; ``_EagerFallbackLine`` says so in one line."""
    import torch._dynamo.config as dc

    dc.recompile_limit = max(dc.recompile_limit, entries)
    dc.accumulated_recompile_limit = max(dc.accumulated_recompile_limit, entries)
    log = logging.getLogger("torch._dynamo.convert_frame")
    if not any(isinstance(f, _EagerFallbackLine) for f in log.filters):
        log.addFilter(_EagerFallbackLine())


class _EagerFallbackLine(logging.Filter):
    """Replaces Dynamo's several-line "hit config.recompile_limit" log record (easy to miss, and lost in a
    Ray worker's log) by one line on stderr, once per compiled function."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record) -> bool:
        if not str(record.msg).startswith("torch._dynamo hit config."):
            return True
        limit_type, limit, function, reason = record.args[:4]
        if function not in self.seen:
            self.seen.add(function)
            print(
                f"c2f-search: torch.compile reached {limit_type}={limit} for {function}: its new shapes run "
                f"eagerly (slower, same results); last recompile reason: {str(reason).splitlines()[0]}",
                file=sys.stderr,
                flush=True,
            )
        return False


class TrainStep:
    """``step(x, y, opt)`` -> the loss as a detached device tensor. Nothing in it reads a value back
    to the host, so the host queues the next steps while the device works."""

    def __init__(
        self,
        model,
        objective,
        precision: str,
        device: torch.device,
        compile: bool,
        scaler: torch.amp.GradScaler | None = None,
    ):
        """`objective`: ``extra(model, x)`` (host-side draws) and ``forward_loss(model, x, y, extra)``,
        e.g. ``ClassificationLoss`` or a run's objective (``c2f_search.objectives``)."""
        self.model, self.scaler, self.calls = model, scaler, 0
        fwd = _ForwardLoss(model, objective, precision, device)
        self.graphs = compile and device.type == "cuda"
        # calls that compile or warm up rather than train at speed: Inductor compiles at the first; CUDA
        # graph trees warm up at the first, record at the second and replay from the third
        self.warmup_calls = (3 if self.graphs else 1) if compile else 0
        if compile:  # one static shape per phase: specialise, never trace dynamic shapes
            allow_recompiles()
            fwd = torch.compile(fwd, dynamic=False, mode="reduce-overhead" if self.graphs else None)
        self.fwd = fwd

    def __call__(self, x, y, opt, extra=None) -> torch.Tensor:
        self.calls += 1
        # grads of the step before alias its graph's outputs: drop them before the next replay
        opt.zero_grad(set_to_none=True)
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = self.fwd(x, y, extra)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)  # fused Adam skips an overflowing step on the device
            self.scaler.update()
        else:
            loss.backward()
            opt.step()
        # a CUDA graph's output is overwritten by its next replay: keep a copy
        return loss.detach().clone() if self.graphs else loss.detach()


def sum_finite(window: list, step: int, where: str, every: int) -> torch.Tensor:
    """The losses of the steps before `step`, summed on the device; one host read says whether all are
    finite, and if not, which step came first (the steps after it have run: say so)."""
    losses = torch.stack(window)
    bad = ~torch.isfinite(losses)
    if bad.any():
        k = int(bad.nonzero()[0])
        raise NonFiniteLoss(
            f"loss is {losses[k].item()} at step {step - len(window) + k} ({where}; found at step "
            f"{step - 1} by the check that runs every {every} steps); lower --lr or check the data"
        )
    return losses.sum()
