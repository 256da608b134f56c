"""Checkpoint weight averaging (``TrainConfig.weight_averaging``).

* ``from:E`` - the mean of the weights at every evaluation of the final phase from epoch E on
  (AST: ``wa_start`` = 1 on AudioSet, 6 on its balanced set);
* ``top:K``  - the mean of the K final-phase evaluations with the best validation metric (HTS-AT: 15).

Only the final phase counts: its weights share one geometry. A ``Run`` with ``weight_averaging`` set
installs ``WeightAverage`` as its first callback: it sees every record, and once the schedule is done it
evaluates the averaged model and hands back its own record (``averaged`` = true). ``from:E`` keeps one running
sum; ``top:K`` keeps K copies of the weights, in memory and in every checkpoint of the run.
"""

from __future__ import annotations

import time

import torch

from ...config import parse_averaging
from .base import Callback


class WeightAverage(Callback):
    state_key = "weight_averaging"

    def __init__(self, text: str, final_C: int):
        self.mode, self.n = parse_averaging(text)
        self.final_C = final_C
        self.total: dict | None = None  # from: running sum
        self.count = 0
        self.best: list[dict] = []  # top: {"metric", "step", "weights"}, best first
        self.last_step = -1  # records up to here are in: an adopted fork's state brings its own

    def on_eval_end(self, run, record):
        if not record["averaged"] and record["step"] > self.last_step:
            self.last_step = record["step"]
            self.observe(record, run.model)

    def on_fit_end(self, run):
        """The averaged model, evaluated: its own record after the schedule's last one."""
        if not run.history or run.history[-1]["averaged"]:
            return None
        t0, sd = time.perf_counter(), self.averaged()
        if sd is None:
            return None
        from ...models import load_model

        m = run.model
        metric, val_loss = run.evaluator.evaluate(
            load_model(m.model_name, m.geometry, m.model_kwargs, sd, run.device), "val", run.C, run.method
        )
        run.ledger.add_time(wall=time.perf_counter() - t0)
        return {**run.history[-1], "val_metric": metric, "val_loss": val_loss, **run.ledger.counters, "averaged": True}

    def observe(self, record: dict, model) -> None:
        if record["C"] != self.final_C:
            return
        if self.mode == "from" and record["epoch"] + 1e-9 < self.n:
            return
        metric = float(record["val_metric"])
        if self.mode == "top" and len(self.best) >= self.n and metric <= self.best[-1]["metric"]:
            return  # cannot enter the top n (a tie keeps the earlier one)
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.mode == "from":
            if self.total is None:
                self.total = weights
            else:  # float tensors are summed; counters (BatchNorm's batches seen) keep the latest
                self.total = {k: self.total[k] + v if v.is_floating_point() else v for k, v in weights.items()}
            self.count += 1
        else:
            self.best.append({"metric": metric, "step": int(record["step"]), "weights": weights})
            self.best.sort(key=lambda e: (-e["metric"], e["step"]))  # ties: the earlier one stays
            del self.best[self.n :]

    def averaged(self) -> dict | None:
        """The averaged weights, or None if no evaluation qualified."""
        if self.mode == "from":
            if not self.count:
                return None
            return {k: v / self.count if v.is_floating_point() else v for k, v in self.total.items()}
        if not self.best:
            return None
        last = max(self.best, key=lambda e: e["step"])["weights"]
        return {
            k: (torch.stack([e["weights"][k] for e in self.best]).mean(0) if v.is_floating_point() else v)
            for k, v in last.items()
        }

    def members(self) -> str:
        return (
            f"{self.count} evaluations from epoch {self.n:g}"
            if self.mode == "from"
            else f"the best {len(self.best)} of the final phase (steps {sorted(e['step'] for e in self.best)})"
        )

    def state_dict(self) -> dict:
        return {
            "final_C": self.final_C,
            "total": self.total,
            "count": self.count,
            "best": self.best,
            "last_step": self.last_step,
        }

    def load_state_dict(self, s: dict) -> None:
        if s and s.get("final_C") == self.final_C:  # a forked history ending at another C starts afresh
            self.total, self.count, self.best = s["total"], s["count"], list(s["best"])
            self.last_step = s.get("last_step", -1)
