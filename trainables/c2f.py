"""Function trainable: one trial = one schedule plus its hyperparameters.

It adds nothing to the training logic: it builds ``c2f_search.train.Run``, restores it from
Tune's checkpoint when there is one, and reports every record (each epoch and each phase end,
``c2f_search.records``) with a checkpoint holding the full training state.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from c2f_search.config import SEARCHABLE, TrainConfig
from c2f_search.data import Data
from c2f_search.errors import DataError
from c2f_search.io import load_checkpoint, save_checkpoint
from c2f_search.pretrain import finetune_record
from c2f_search.records import CHECKPOINT_FILE, RECORD_FIELDS, keep_checkpoint
from c2f_search.schedule import parse_schedule
from c2f_search.train import Run


def _device() -> str:
    # Ray hides GPUs it has not granted, so any visible CUDA device is this trial's
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _maybe_inject_fault(rec: dict) -> None:
    """Fault injection for tests: C2F_INJECT_FAULT=MARKER_FILE:EPOCH crashes once, after that epoch."""
    spec = os.environ.get("C2F_INJECT_FAULT")
    if not spec:
        return
    marker, _, epoch = spec.rpartition(":")
    if rec["epoch"] >= float(epoch) and not Path(marker).exists():
        Path(marker).write_text("fault injected\n")
        raise RuntimeError(f"injected fault after epoch {rec['epoch']}")


def trial_config(config: dict, setup: dict) -> TrainConfig:
    """The trial's TrainConfig: TrainConfig's defaults, the space's fixed settings, then the sampled ones
    (the model too, where the space searches it or a grid entry names it)."""
    hp = {**setup.get("fixed", {}), **{k: v for k, v in config.items() if k in SEARCHABLE}}
    return TrainConfig(schedule=config["schedule"], model=config.get("model", setup["model"]),
                       model_kwargs=setup.get("model_kwargs", {}), metric_target=setup.get("metric_target"),
                       objective=setup.get("objective", "supervised"), **hp)


def train_schedule(config: dict, setup: dict) -> None:
    """Run one trial. `config` holds the schedule and searched hyperparameters; `setup`
    the fixed parts (data, model, fixed hyperparameters, metric target)."""
    cfg = trial_config(config, setup)
    try:
        data = Data.from_specs(**setup["data"])
    except (DataError, OSError) as e:
        raise DataError(f"node {socket.gethostname()} cannot read the data: {e}. Every node needs the same "
                        f"paths: put the data on a shared mount (NFS/EFS) or sync it with cluster.yaml's "
                        f"file_mounts") from None
    state, started = None, time.time()
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    run = Run(cfg, data, _device(), state)
    if os.environ.get("C2F_INJECT_NAN") == cfg.schedule:  # fault injection for tests: a diverging trial
        with torch.no_grad():
            next(run.model.parameters()).fill_(float("nan"))
    # where this attempt runs and resumed from: node-loss recovery is measured from these
    attempt = {"node_id": ray.get_runtime_context().get_node_id(), "attempt_started_at": started,
               "resumed_from_step": state["step"] if state else -1, "lr": cfg.lr, "batch_size": cfg.batch_size,
               "seed": cfg.seed, "model": cfg.model}
    n_phases = len(parse_schedule(cfg.schedule).phases)
    for rec in run.records():
        if setup.get("finetune") and rec["schedule_done"]:  # the trial ends with its fine-tune's record
            rec = {**rec, "schedule_done": False}
        # the driver's runner.KeepCheckpoints never deletes a checkpoint the front may need
        metrics = {k: rec.get(k) for k in RECORD_FIELDS} | attempt | {
            "checkpoint_needed": keep_checkpoint(run.history, n_phases)}
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(run.state_dict(), Path(d) / CHECKPOINT_FILE)
            _maybe_inject_fault(rec)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    if setup.get("finetune"):  # a pretraining search: its objective is the downstream metric
        rec = finetune_record(run, setup["finetune"], _device())
        tune.report({k: rec.get(k) for k in RECORD_FIELDS} | attempt)
