import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
os.environ.setdefault("RAY_enable_metrics_collection", "0")  # no dashboard here: saves about 1 s per ray.init

import json  # noqa: E402

import pytest  # noqa: E402

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
