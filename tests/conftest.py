import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
os.environ.setdefault("RAY_enable_metrics_collection", "0")  # no dashboard here: saves about 1 s per ray.init

import json  # noqa: E402
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest  # noqa: E402
import soundfile as sf

TINY_DATA = "builtin:events?train=40&val=20&seed=3"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Every test shares one cache (built-in audio and fbank stores) outside the user's home."""
    d = tmp_path_factory.mktemp("c2f-cache")
    os.environ["C2F_CACHE"] = str(d)
    yield d


@pytest.fixture(scope="session")
def tiny_data(_cache):
    from c2f_search.data.sets import Data

    return Data.from_specs(TINY_DATA)


def tiny_config(schedule, **kw):
    """The tests' small training: depth 1, batch 8, a short warmup, SpecAugment and mixup on."""
    from c2f_search import TrainConfig

    base = dict(model_kwargs={"depth": 1}, batch_size=8, lr=3e-4, warmup_steps=2, freqm=8, timem=32, mixup=0.5)
    return TrainConfig(schedule, **{**base, **kw})


def last_state(run, at_step=None):
    """The state of `run` after its record at step `at_step` (None: after its last record)."""
    state = None
    for rec in run.records():
        state = run.state_dict()
        if rec["step"] == at_step:
            break
    return state


def craft_search(root, trial_ids=("base", "c2f"), metric_name="accuracy", baseline_done=True):
    """A search folder written by hand, as Tune lays one out: a baseline and a coarse-to-fine trial, both
    finished (the baseline stopped early where not `baseline_done`), each a trial folder with its
    result.json holding its config (no Ray, no training)."""
    from c2f_search.schema import RECORD_FIELDS

    for k, (tid, schedule, Cs) in enumerate(
        [(trial_ids[0], "none:1x2", (1, 1)), (trial_ids[1], "fshift:2x1,1x1", (2, 1))]
    ):
        trial = root / "search" / f"train_schedule_{k}"
        trial.mkdir(parents=True)
        lines = [
            {
                **dict.fromkeys(RECORD_FIELDS),
                "schedule": schedule,
                "method": schedule.split(":")[0],
                "phase": step if Cs[0] > 1 else 1,
                "C": C,
                "epoch": float(step),
                "step": 10 * step,
                "val_metric": 0.3 * step,
                "metric_name": metric_name,
                "train_flops": 1e9 * step * (3 - C),
                "train_time_s": float(step),
                "phase_end": step == 2 or Cs[0] > 1,
                "schedule_done": step == 2 and (baseline_done or k > 0),
                "averaged": False,
                "trial_id": tid,
                "config": {"schedule": schedule},
            }
            for step, C in ((1, Cs[0]), (2, Cs[1]))
        ]
        (trial / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def wav(path, n=8000, value=None):
    y = np.random.default_rng(0).standard_normal(n).astype("float32") * 0.1 if value is None else value
    sf.write(str(path), y, 16000, subtype="FLOAT")  # float, so NaN survives
    return str(path)


def datafile(tmp_path, entries, labels=("/m/a", "/m/b")):
    csv = tmp_path / "class_labels_indices.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},{m},{m[3:]}\n" for i, m in enumerate(labels)))
    f = tmp_path / "train.json"
    f.write_text(json.dumps({"data": entries}))
    return f, csv


def grid_space(tmp_path, schedules):
    f = tmp_path / "space.yaml"
    f.write_text(
        "epochs: 2\nschedules: [" + ", ".join(f'"{x}"' for x in schedules) + "]\n"
        "fixed: {lr: 3.0e-4, batch_size: 8, warmup_steps: 2}\n"
    )
    return f


def run_cli(args, log, env, timeout):
    """Run the CLI with output to a file: Ray's daemons inherit pipes and can hold them open."""
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "c2f_search.cli", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
        ).returncode
    return subprocess.CompletedProcess(args, rc, stdout=Path(log).read_text())


@pytest.fixture
def fresh_ray():
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


def kill_ray_session_of(driver_pid: int) -> None:
    """Kill what is left of the Ray instance a killed driver started (its GCS, raylet, ...), and nothing
    else: other Ray instances on the machine (`ray stop` would kill them all) are left alone. Ray's
    session folder ends with the driver's pid: /tmp/ray/session_<time>_<pid>."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "session_" in cmd and (f"_{driver_pid}/" in cmd or cmd.strip().endswith(f"_{driver_pid}")):
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
