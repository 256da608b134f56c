"""Function trainable: one trial = one schedule plus its hyperparameters.

It adds nothing to the training logic: it builds ``c2f_search.train.Run``, restores it from
Tune's checkpoint when there is one (or, for a PBT member, from the better member it copies), and
its ``TuneReporter`` callback reports every record (each epoch and each phase end,
``c2f_search.records``) with a checkpoint holding the full training state.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from c2f_search.config import SEARCHABLE, TrainConfig
from c2f_search.controllers import Population
from c2f_search.errors import CheckpointError, DataError
from c2f_search.files import atomic_write, load_checkpoint, save_checkpoint
from c2f_search.models.pretrained import InitFile
from c2f_search.schema import CHECKPOINT_FILE, RECORD_FIELDS, keep_checkpoint
from c2f_search.train.callbacks.base import Callback
from c2f_search.train.finetune import finetune_record
from c2f_search.train.optim import apply_hyperparameters
from c2f_search.train.run import Run
from c2f_search.train.state import exploit

OWNER_FILE = "trial_id"  # which trial wrote a checkpoint: PBT hands a member a better member's


def trial_device(gpu_ids: list, visible: str | None, cuda: bool) -> str:
    """The device of a trial Ray granted `gpu_ids` (physical ids, ``ray.get_gpu_ids()``): its first GPU's
    index among the devices this process sees (`visible`: CUDA_VISIBLE_DEVICES; Ray sets it to the granted
    ids unless RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, and unset means every GPU, by physical id)."""
    if not gpu_ids:
        return "cpu"
    if not cuda:  # granted a GPU (a resource label) that torch cannot use: say so, train on the CPU
        print(f"trial granted GPU {gpu_ids[0]} but torch sees no CUDA device: training on the CPU", file=sys.stderr)
        return "cpu"
    first = str(gpu_ids[0])
    order = [d.strip() for d in visible.split(",")] if visible else None
    return f"cuda:{order.index(first) if order else int(first)}"


def _device() -> str:
    device = trial_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available())
    if device != "cpu":  # the current device too: what torch does on "the" GPU (CUDA graphs, bf16 check) is on it
        torch.cuda.set_device(device)
    return device


def _fresh_compiler(cpus: float) -> None:
    """Before the trial compiles anything: Inductor's compile workers bounded by the trial's CPUs (it starts up
    to 32 per process otherwise), its FX graph and autograd caches on (they live in torch's one folder per node
    and user, $TMPDIR/torchinductor_$USER or TORCHINDUCTOR_CACHE_DIR, so a trial compiling a shape that another
    trial on the node compiled loads it), and Dynamo's in-memory state cleared, so that a process Tune reuses
    (``reuse_actors``) starts each trial as a fresh one would: no compiled entry, CUDA graph or recompile count
    is carried from the trial before."""
    import torch._dynamo
    import torch._functorch.config as fc
    import torch._inductor.config as ic

    ic.compile_threads = max(1, int(cpus))
    ic.fx_graph_cache = fc.enable_autograd_cache = True
    torch._dynamo.reset()
    # a reused process waits this long for the trial before to unwind (Tune's default, 2 s, fails the trial)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")


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
    model = config.get("model", setup["model"])
    init = setup.get("init")
    return TrainConfig(
        schedule=config["schedule"],
        model=model,
        init=init["uri"] if init and model in init["models"] else None,
        model_kwargs=setup.get("model_kwargs", {}),
        metric_target=setup.get("metric_target"),
        objective=setup.get("objective", "supervised"),
        **hp,
    )


def copy_member(run: Run, donor_state: dict) -> Run:
    """PBT's exploit: `run` continues from a better member's state (its weights, optimizer state and
    history) under its own hyperparameters, its LR from here on."""
    run.load_state_dict(exploit(donor_state, run.identity()))
    apply_hyperparameters(run.cfg, run.opt, run.lr_sched)
    return run


def _ledger() -> Path:
    """What this population member has spent, kept in its trial folder across PBT's restarts."""
    return Path(tune.get_context().get_trial_dir()) / "member.json"


def _member_ledger() -> dict:
    """train_flops: what the member last reported; inherited: the part of it that came with its last donor's
    state (the donor's cost, not work this member ran)."""
    f = _ledger()
    return {"train_flops": 0.0, "inherited": 0.0, **(json.loads(f.read_text()) if f.is_file() else {})}


def _record_member(run, inherited: float) -> None:
    atomic_write(_ledger(), json.dumps({"train_flops": run.counters["train_flops"], "inherited": inherited}))


def _count_thrown_away(run) -> float:
    """A member that copies a better one throws its own training away: that work stays in its cost
    (train_flops, and controller_flops for the controller's own spending), never hidden. Only the member's
    own work is added: a previous donor's share was that donor's cost. Returns what this copy inherits."""
    was = _member_ledger()
    inherited = run.counters["train_flops"]
    run.ledger.add_controller(train_flops=was["train_flops"] - was["inherited"])
    return inherited


class TuneReporter(Callback):
    """Reports every record to Tune with a checkpoint of the full training state."""

    def __init__(self, attempt: dict, me: str, finetune: bool, member: bool):
        self.attempt, self.me, self.finetune, self.member = attempt, me, finetune, member
        self.inherited = _member_ledger()["inherited"] if member else 0.0  # a resume keeps its last copy's

    def on_eval_end(self, run, rec):
        if self.finetune and rec["schedule_done"]:  # the trial ends with its fine-tune's record
            rec = {**rec, "schedule_done": False}
        # the driver's runner.KeepCheckpoints never deletes a checkpoint the front may need
        metrics = (
            {k: rec.get(k) for k in RECORD_FIELDS}
            | self.attempt
            | {"checkpoint_needed": keep_checkpoint(run.history, run.controller.final_C())}
        )
        if self.member:
            _record_member(run, self.inherited)
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(run.state_dict(), Path(d) / CHECKPOINT_FILE)
            (Path(d) / OWNER_FILE).write_text(self.me)
            _maybe_inject_fault(rec)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def train_schedule(config: dict, setup: dict) -> None:
    """Run one trial. `config` holds the schedule and searched hyperparameters; `setup`
    the fixed parts (data, model, fixed hyperparameters, metric target)."""
    cfg = trial_config(config, setup)
    _fresh_compiler(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))
    try:
        data = setup["data"].load()
    except (DataError, OSError) as e:
        raise DataError(
            f"node {socket.gethostname()} cannot read the data: {e}. Every node needs the same "
            f"paths: put the data on a shared mount (NFS/EFS) or sync it with cluster.yaml's "
            f"file_mounts"
        ) from None
    state, started, donor = None, time.time(), None
    me = tune.get_context().get_trial_id()
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
            owner = Path(d) / OWNER_FILE
            donor = owner.read_text() if owner.is_file() and owner.read_text() != me else None
    controller = None
    if "C" in config:  # a population member: PBT sets its C (and lowers it when it copies a better member)
        controller = Population(
            cfg.schedule, "population", C=config["C"], budget=setup["budget"], eval_every=cfg.eval_every
        )
    device = _device()
    # where this attempt runs and resumed from: node-loss recovery is measured from these
    attempt = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "attempt_started_at": started,
        "resumed_from_step": state["step"] if state else -1,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "model": cfg.model,
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "exploited_from": donor,
    }
    reporter = TuneReporter(attempt, me, bool(setup.get("finetune")), controller is not None)
    # a trial that builds its model afresh (not one restored from its own checkpoint) reads the init, checked
    # against its hash (a PBT copy builds it before taking the donor's weights)
    fresh = state is None or donor is not None
    init = InitFile.to_read(setup["init"]) if cfg.init and fresh else None
    init_from = init.local() if init else None
    try:
        if donor is None:
            run = Run(cfg, data, device, state, controller=controller, callbacks=[reporter], init_from=init_from)
        else:
            run = copy_member(
                Run(cfg, data, device, controller=controller, callbacks=[reporter], init_from=init_from), state
            )
            reporter.inherited = _count_thrown_away(run)
    except CheckpointError:
        if init:  # replaced between its check and its load: say it changed, not that it is damaged
            init.recheck()
        raise
    # what the trial will spend, known before it trains: MOASHA ranks trials at a rung by it
    attempt["planned_flops"] = run.ledger.planned_train_flops(run.controller)
    if os.environ.get("C2F_INJECT_NAN") == str(cfg.schedule):  # fault injection for tests: a diverging trial
        with torch.no_grad():
            next(run.model.parameters()).fill_(float("nan"))
    run.fit()
    if setup.get("finetune"):  # a pretraining search: its objective is the downstream metric
        rec = finetune_record(run, setup["finetune"], device)
        tune.report({k: rec.get(k) for k in RECORD_FIELDS} | attempt)
