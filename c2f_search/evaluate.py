"""Evaluate a saved training state on any split of the data (e.g. a held-out test split), without Ray."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .config import TrainConfig
from .data import Data
from .io import load_checkpoint
from .records import CHECKPOINT_FILE
from .train import Run


def evaluate_state(state: dict, data: Data, split: str = "test", device="cpu") -> float:
    """The metric of the model in `state` on `split`, at the C it was trained at when saved."""
    return Run(TrainConfig.from_dict(state["config"]), data, device, state).evaluate(split)


def read_state(fs, checkpoint_dir: str) -> dict:
    """The training state in a Tune checkpoint folder on a pyarrow filesystem (local, s3://, gs://)."""
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / CHECKPOINT_FILE
        with fs.open_input_stream(f"{checkpoint_dir}/{CHECKPOINT_FILE}") as src:
            local.write_bytes(src.read())
        return load_checkpoint(local)
