"""Trials on GPUs: each trial trains on the GPU Ray granted it, starts a clean compiler bounded by its CPUs,
and asks for GPUs by what the cluster has (a real local Ray cluster with GPUs as resource labels)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def test_a_trial_uses_the_gpu_ray_granted():
    from trainables.c2f import trial_device

    assert trial_device([], None, True) == "cpu"
    assert trial_device(["3"], "3", True) == "cuda:0"  # Ray set CUDA_VISIBLE_DEVICES to the granted GPU
    assert trial_device([2], None, True) == "cuda:2"  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, all visible
    assert trial_device(["5"], "4,5,6", True) == "cuda:1"  # ... with the node's own CUDA_VISIBLE_DEVICES
    assert trial_device(["GPU-b2"], "GPU-a1,GPU-b2", True) == "cuda:1"  # UUIDs
    assert trial_device(["0"], "0", False) == "cpu"  # a GPU resource torch cannot see (a fake one)


def test_each_trial_starts_a_clean_compiler_bounded_by_its_cpus(monkeypatch):
    import torch._inductor.config as ic
    from torch._dynamo.utils import counters

    from trainables.c2f import _fresh_compiler

    monkeypatch.delenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", raising=False)
    monkeypatch.setattr(ic, "compile_threads", 32)
    g = torch.compile(lambda x: x + 1, backend="eager")
    g(torch.ones(3))
    compiled = counters["stats"]["unique_graphs"]
    g(torch.ones(3))
    assert counters["stats"]["unique_graphs"] == compiled  # the entry is kept ...
    _fresh_compiler(2.0)
    g(torch.ones(3))
    assert counters["stats"]["unique_graphs"] == compiled + 1  # ... until the next trial starts
    assert ic.compile_threads == 2 and ic.fx_graph_cache
    assert float(os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"]) > 2


# --------------------------------------------------------------------------- Ray: resources and reused actors
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_ray():
    import ray

    ray.shutdown()
    yield ray
    ray.shutdown()


def _settings(tmp_path, schedules, **kw):
    from c2f_search.settings import DataSettings, SearchSettings

    from ..conftest import TINY_DATA

    space = tmp_path / "space.yaml"
    space.write_text(
        "epochs: 2\nschedules: [" + ", ".join(f'"{s}"' for s in schedules) + "]\n"
        "fixed: {lr: 3.0e-4, batch_size: 8, warmup_steps: 2}\n"
    )
    return SearchSettings(
        space=str(space),
        out=str(tmp_path / "s"),
        keep_checkpoints=None,
        model_kwargs={"depth": 1},
        data=DataSettings(TINY_DATA, None, None, "auto", False, None, str(tmp_path / "c"), None, None).resolved(),
        **kw,
    )


@pytest.mark.slow
def test_gpus_per_trial_follow_the_cluster(tmp_path, fresh_ray, capsys):
    from c2f_search.search.runner import trial_resources
    from c2f_search.search.space import load_space

    st = _settings(tmp_path, ["none:1x1"])
    space = load_space(st.space)
    assert space.resources == {"cpu": 1, "gpu": "auto"}
    fresh_ray.init(num_cpus=1, num_gpus=2, include_dashboard=False)  # a fake GPU: a resource label, no card
    assert trial_resources(st, space, joined=False) == {"cpu": 1, "gpu": 1}
    assert (
        "trials get 1 GPU and 1 CPU each (resources.gpu auto: the cluster has 2 GPUs; change it with "
        "--gpus-per-trial N)" in capsys.readouterr().out
    )
    st.resources = {"cpu": None, "gpu": 0.0}  # --gpus-per-trial 0: CPUs only, on a GPU cluster
    assert trial_resources(st, space, joined=False) == {"cpu": 1, "gpu": 0}
    assert "(--gpus-per-trial;" in capsys.readouterr().out
    fresh_ray.shutdown()
    fresh_ray.init(num_cpus=1, include_dashboard=False)
    st.resources = {}
    assert trial_resources(st, space, joined=False)["gpu"] == 0
    assert "the cluster has no GPU" in capsys.readouterr().out
    # a cluster launched from cluster.yaml: no GPU node up yet, but the autoscaler can start one
    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text((ROOT / "cluster.yaml").read_text())
    assert trial_resources(st, space, joined=True, autoscaler_config=boot)["gpu"] == 1
    assert trial_resources(st, space, joined=False, autoscaler_config=boot)["gpu"] == 0  # a local instance
    space.resources["gpu"] = 0.5  # a space file's own value wins over auto
    assert trial_resources(st, space, joined=True, autoscaler_config=boot)["gpu"] == 0.5
    # KubeRay: no config file on the head, but its autoscaler reported its worker groups to Ray's GCS
    import ray._raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_put

    space.resources["gpu"] = "auto"
    config = autoscaler_pb2.ClusterConfig()
    config.node_group_configs.add(name="gpu-workers", resources={"CPU": 8, "GPU": 1}, max_count=0)
    put = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString()
    _internal_kv_put(*put, overwrite=True, namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)
    none = tmp_path / "no-such-config.yaml"
    assert trial_resources(st, space, joined=True, autoscaler_config=none)["gpu"] == 0  # a group of 0 nodes
    config.node_group_configs[0].max_count = 4
    put = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString()
    _internal_kv_put(*put, overwrite=True, namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)
    capsys.readouterr()
    assert trial_resources(st, space, joined=True, autoscaler_config=none)["gpu"] == 1
    assert "node types its autoscaler may start have GPUs" in capsys.readouterr().out


@pytest.mark.slow
def test_on_a_gpu_cluster_trials_get_a_gpu_and_a_reused_process_carries_nothing(tmp_path, fresh_ray):
    """Two trials, one at a time, on a cluster with a fake GPU: each is granted it by default, the second runs
    in the first one's process (reuse_actors), and both train exactly as the bare core does alone."""
    import json

    from c2f_search import Run, TrainConfig
    from c2f_search.search.runner import run_search

    scheds = ["fshift:2x1,1x1", "avgpool:2x1,1x1"]
    st = _settings(tmp_path, scheds)
    fresh_ray.init(num_cpus=1, num_gpus=1, include_dashboard=False)
    results = run_search(st, progress_stream=open(os.devnull, "w"))
    assert not results.errors
    rows = {}
    for d in (tmp_path / "s" / "search").iterdir():
        if (d / "result.json").is_file():
            rs = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
            rows[rs[0]["schedule"]] = rs
    assert sorted(rows) == sorted(scheds)
    assert all(r["gpu_ids"] == ["0"] and r["device"] == "cpu" for rs in rows.values() for r in rs)
    assert len({r["pid"] for rs in rows.values() for r in rs}) == 1  # one process for both trials
    data = st.data.load()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the 1-CPU trial ran: another count sums in another order (last bits differ)
    try:
        for sched, rs in rows.items():
            cfg = TrainConfig(sched, model_kwargs={"depth": 1}, lr=3e-4, batch_size=8, warmup_steps=2)
            assert [(r["step"], r["C"], r["train_loss"], r["val_metric"]) for r in rs] == [
                (r["step"], r["C"], r["train_loss"], r["val_metric"]) for r in Run(cfg, data, "cpu").records()
            ]
    finally:
        torch.set_num_threads(threads)
