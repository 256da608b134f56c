"""The one evaluation loop: every batch of a split, prepared by the input pipeline and scored by the
objective's ``Scorer`` under the run's autocast, eagerly (only the training step is compiled). The
split asked for is the split scored; only validation counts as evaluation FLOPs (a test evaluation is
reporting). ``evaluate_state`` scores a saved state without building a ``Run``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .precision import autocast, matmul_mode

EVAL_BATCH = 256


class Evaluator:
    def __init__(self, objective, pipeline, precision: str, device: torch.device, ledger=None):
        self.objective, self.pipeline, self.precision, self.device = objective, pipeline, precision, device
        self.ledger = ledger

    @torch.no_grad()
    def evaluate(self, model, split: str, C: int, method) -> tuple[float, float]:
        """(metric, loss) of `model` on every clip of `split`, at compression C of `method`; every token (a
        token-dropping method drops tokens in training steps only)."""
        model.eval()
        scorer = self.objective.scorer(model, C)
        with (
            matmul_mode(self.precision, self.device),
            self.pipeline.eval_batches(split, C, EVAL_BATCH, method) as batches,
        ):
            for x, y in batches:
                with autocast(self.precision, self.device):
                    scorer.add(x, y)
        if split == "val" and self.ledger is not None:
            self.ledger.add_eval(self.objective.eval_flops(model) * len(self.pipeline.features(split, C, method).kept))
        return scorer.result()


def evaluate_state(state: dict, data, split: str = "test", device="cpu") -> float:
    """The metric of the model in `state` on `split`, at the C it was trained at when saved. Only that
    split's features are read; normalization is the state's own."""
    from ..compress import get_method
    from ..config import TrainConfig
    from ..geometry import Geometry
    from ..models import load_model
    from ..objectives import make_objective
    from .pipeline import InputPipeline
    from .precision import resolve_device, resolve_precision
    from .state import upgrade

    device = resolve_device(device)
    cfg = TrainConfig.from_dict(state["config"])
    fe = data.fe
    full = Geometry(fe.num_mel_bins, fe.target_length)
    phase = upgrade(state)["phases"][-1]
    method = get_method(phase["method"])
    model = load_model(
        state["model_name"], Geometry(**state["geometry"]), state["model_kwargs"], state["model"], device
    )
    pipeline = InputPipeline(cfg, data, device, norm=tuple(state["identity"]["norm"]))
    evaluator = Evaluator(
        make_objective(cfg, data, full), pipeline, resolve_precision(state["precision"], device), device
    )
    return evaluator.evaluate(model, split, phase["C"], method)[0]


def read_state(fs, checkpoint_dir: str) -> dict:
    """The training state in a Tune checkpoint folder on a pyarrow filesystem (local, s3://, gs://)."""
    from ..files import load_checkpoint
    from ..schema import CHECKPOINT_FILE

    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / CHECKPOINT_FILE
        with fs.open_input_stream(f"{checkpoint_dir}/{CHECKPOINT_FILE}") as src:
            local.write_bytes(src.read())
        return load_checkpoint(local)
