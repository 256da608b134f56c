"""A pretraining search's objective: the downstream metric after a short fixed fine-tune.

A space with ``objective: masked-patch`` searches SSAST pretraining schedules. With a ``finetune``
block ({data, schedule, fixed}) each finished trial fine-tunes its encoder on the labelled data with
that fixed schedule, from the same seed, and reports the last fine-tune evaluation as its final record;
without one, the trial's metric is the pretraining proxy (masked-patch accuracy on held-out clips).
FLOPs in the record are the pretraining's: the fine-tune is the same for every trial.
"""

from __future__ import annotations

from ..config import TrainConfig
from ..models import get_family


def finetune(state: dict, spec: dict, device="cpu"):
    """Fine-tune the encoder of a pretraining run state with `spec`; returns the finished Run."""
    from .run import Run

    family = get_family(state["model_name"])
    kwargs = {k: v for k, v in state["model_kwargs"].items() if k in {s.name for s in family.settings}}
    cfg = TrainConfig(
        spec["schedule"],
        model=state["model_name"],
        model_kwargs=kwargs,
        seed=state["config"]["seed"],
        **spec.get("fixed", {}),
    )
    run = Run(cfg, spec["data"].load(), device)
    family.init_from_run(run.model, state, "the pretrained encoder")
    for _ in run.records():
        pass
    return run


def finetune_record(run, spec: dict, device="cpu") -> dict:
    """The pretraining run's last record, carrying the fine-tune's metric instead of the proxy."""
    ft = finetune(run.state_dict(), spec, device)
    last = ft.history[-1]
    return {
        **run.history[-1],
        "val_metric": last["val_metric"],
        "metric_name": last["metric_name"],
        "phase_end": True,
        "schedule_done": True,
        "averaged": False,
    }
