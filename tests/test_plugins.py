"""A method, a model family, a controller, an objective and a callback, each added from outside the package
(``tests/toys/``): each registers itself and trains coarse to fine; its registration is gone after its test."""

from __future__ import annotations

import subprocess
import sys

import pytest

from c2f_search import Geometry, Run, TrainConfig
from c2f_search.errors import ConfigError, ScheduleError
from c2f_search.validate import validate

from .conftest import TINY_DATA


# ------------------------------------------------------------------- pieces registered from outside
@pytest.fixture
def toy():
    """Import a toy module from tests/toys (again, so it registers itself); its registrations are undone
    after the test, so other tests see only the built-ins."""
    import importlib

    from c2f_search.compress import METHODS
    from c2f_search.controllers import CONTROLLERS
    from c2f_search.models import MODELS
    from c2f_search.objectives import OBJECTIVES

    registries = (METHODS, MODELS, CONTROLLERS, OBJECTIVES)
    before = {id(r): set(r.names()) for r in registries}

    def load(name):
        mod = importlib.import_module(f"tests.toys.{name}")
        return importlib.reload(mod)

    yield load
    for r in registries:
        for name in set(r.names()) - before[id(r)]:
            r.unregister(name)
    assert {id(r): set(r.names()) for r in registries} == before, "a toy is still registered after its test"


def test_a_family_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_family")  # registers toy-net
    cfg = TrainConfig("maxpool:4x1,2x1,1x1", model="toy-net", batch_size=8, lr=1e-2, warmup_steps=0)
    run = Run(cfg, tiny_data, "cpu")
    recs = list(run.records())
    assert [r["C"] for r in recs] == [4, 2, 1] and recs[-1]["schedule_done"]
    assert run.model.time_embed.shape[-1] == 256 // 8 and run.model.geometry == Geometry(64, 256)
    flops = [b["train_flops"] - a["train_flops"] for a, b in zip([{"train_flops": 0}] + recs, recs)]
    assert flops[0] < flops[1] < flops[2]  # counted per phase by the same FlopCounterMode path
    with pytest.raises(Exception, match="multiple of 8|divide"):
        Run(TrainConfig("maxpool:64x1,1x1", model="toy-net"), tiny_data, "cpu")


def test_a_family_without_a_capability_is_refused_naming_both(tiny_data, tmp_path, toy):
    toy("toy_family")
    with pytest.raises(
        ScheduleError,
        match="toy-net .*does not support the compression method 'patch-pi': it needs "
        "a patch kernel stretched along time, which toy does not provide",
    ):
        Run(TrainConfig("patch-pi:2x1,1x1", model="toy-net"), tiny_data, "cpu")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "c2f_search.cli",
            "train",
            "--data",
            TINY_DATA,
            "--model",
            "cnn14-tiny",
            "--schedule",
            "patch-bl:2x1,1x1",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "cnn14-tiny" in p.stderr and "'patch-bl'" in p.stderr and not (tmp_path / "r").exists()


def _tiny(schedule, **kw):
    return TrainConfig(schedule, **{"model_kwargs": {"depth": 1}, "batch_size": 8, "lr": 3e-4, "warmup_steps": 2, **kw})


def test_a_method_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_method")  # registers toy-decimate
    run = Run(_tiny("toy-decimate:4x1,2x1,1x1", timem=32), tiny_data, "cpu")
    recs = run.fit()
    assert [r["C"] for r in recs] == [4, 2, 1] and [r["method"] for r in recs] == ["toy-decimate"] * 3
    assert run.model.token_grid == (4, 16)
    with pytest.raises(ScheduleError, match="unknown method 'toy-decimat'"):
        Run(_tiny("toy-decimat:2x1,1x1"), tiny_data, "cpu")


def test_a_controller_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_controller")  # registers toy-count
    run = Run(_tiny("avgpool:4xauto,2xauto,1x1", transition="toy-count:steps=3"), tiny_data, "cpu")
    run.fit()
    assert [(p["C"], p["steps"]) for p in run.phases] == [(4, 3), (2, 3), (1, 5)]
    assert run.phases[1]["reason"] == "counted 3 steps" and run.history[-1]["controller"] == "toy-count"
    with pytest.raises(ConfigError, match="'count=3' is not one of steps="):
        Run(_tiny("avgpool:4xauto,1x1", transition="toy-count:count=3"), tiny_data, "cpu")


def test_an_objective_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_objective")  # registers toy-brier
    run = Run(_tiny("fshift:2x1,1x1", objective="toy-brier", lr=1e-3), tiny_data, "cpu")
    recs = run.fit()
    assert [r["C"] for r in recs] == [2, 1] and all(0 <= r["val_loss"] <= 2 for r in recs)
    assert recs[0]["train_loss"] != recs[1]["train_loss"] and 0 <= recs[-1]["val_metric"] <= 1
    with pytest.raises(ConfigError, match="objective: must be one of masked-patch, supervised, toy-brier"):
        validate(_tiny("none:1x1", objective="toy-brie"))


def test_a_callback_from_outside_sees_every_step_and_keeps_its_state(tiny_data):
    from .toys.toy_callback import StepsPerC

    cb = StepsPerC()
    run = Run(_tiny("avgpool:2x1,1x1"), tiny_data, "cpu", callbacks=[cb])
    it = run.records()
    next(it)  # the end of phase 1
    state = run.state_dict()
    assert (
        cb.steps == {"2": 5} and cb.phase_ends == [2] and state["callbacks"]["toy_steps_per_C"] == {"steps": {"2": 5}}
    )
    again = StepsPerC()
    resumed = Run(_tiny("avgpool:2x1,1x1"), tiny_data, "cpu", state=state, callbacks=[again])
    assert again.steps == {"2": 5}
    resumed.fit()
    assert again.steps == {"2": 5, "1": 5}
