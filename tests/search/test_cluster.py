"""Cluster scale: cluster.yaml against Ray's schema, multi-node node loss, failing trials,
search-level bad input, and storage through a pyarrow filesystem. Real Ray throughout."""

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.fs as pafs
import pytest
import yaml

from c2f_search.analysis.pareto import export
from c2f_search.analysis.rows import load_rows

ROOT = Path(__file__).resolve().parents[2]
DATA = "builtin:events?train=120&val=20&seed=5"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _validate(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_yaml_validates_against_rays_schema():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    _validate(cfg)
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and cfg["head_node_type"] == "head"
    assert any("pip install" in c and "c2f-search" in c for c in cfg["setup_commands"])


DASHBOARD_GCS_PORTS = {8265, 6379, 10001, 8076, 52365}  # dashboard/Jobs API, GCS, client server, ...
WORLD = {"0.0.0.0/0", "::/0"}


def cluster_security_problems(cfg: dict) -> list[str]:
    """What in a cluster.yaml lets someone off the cluster run code on it."""
    problems = []
    start = {"head": cfg.get("head_start_ray_commands", []), "worker": cfg.get("worker_start_ray_commands", [])}
    for kind, cmds in start.items():
        starts = [c for c in cmds if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{kind} nodes start Ray without RAY_AUTH_MODE=token")
    text = yaml.safe_dump(cfg)
    for flag in (
        "dashboard-host=0.0.0.0",
        "dashboard-host 0.0.0.0",
        "ray-client-server-port",
        "node-ip-address=0.0.0.0",
    ):
        if flag in text:
            problems.append(f"a start command opens the dashboard or another port to every interface ({flag})")
    if "RAY_AUTH_TOKEN=" in text:
        problems.append("a token is written into the file; distribute ~/.ray/auth_token instead")
    mounts = cfg.get("file_mounts", {})
    if not any(k.endswith(".ray/auth_token") and v.endswith(".ray/auth_token") for k, v in mounts.items()):
        problems.append("the auth token from `ray get-auth-token --generate` is not copied to the nodes")
    for rule in cfg.get("provider", {}).get("security_group", {}).get("IpPermissions", []):
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        }
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        ports = set(range(0, 65536)) if lo == -1 else set(range(lo, hi + 1))
        if cidrs & WORLD and ports - {22}:
            problems.append(f"a security-group rule opens ports {lo}-{hi} to the world")
    return problems


def test_cluster_yaml_lets_no_one_in():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cluster_security_problems(cfg) == []
    assert cfg["provider"]["security_group"]["IpPermissions"] == []


@pytest.mark.parametrize("opening", ["dashboard_public", "auth_off", "world_rule", "token_in_file"])
def test_the_security_check_catches_an_open_copy(opening):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    if opening == "dashboard_public":
        cfg["head_start_ray_commands"][-1] += " --dashboard-host=0.0.0.0"
    elif opening == "auth_off":
        cfg["worker_start_ray_commands"] = [
            c.replace("RAY_AUTH_MODE=token ", "") for c in cfg["worker_start_ray_commands"]
        ]
    elif opening == "world_rule":
        cfg["provider"]["security_group"]["IpPermissions"] = [
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ]
    else:
        cfg["setup_commands"].append("export RAY_AUTH_TOKEN=abc123")
    assert cluster_security_problems(cfg)
    _validate(cfg)  # still a valid cluster.yaml: only the security check can catch it


@pytest.mark.parametrize("breakage", ["misspelled_key", "missing_resources", "bad_head_type"])
def test_cluster_yaml_validation_catches_a_broken_copy(breakage):
    from jsonschema import ValidationError

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    if breakage == "misspelled_key":
        cfg["available_node_types"]["gpu_worker"]["min_wokers"] = cfg["available_node_types"]["gpu_worker"].pop(
            "min_workers"
        )
    elif breakage == "missing_resources":
        del cfg["available_node_types"]["gpu_worker"]["resources"]
    else:
        cfg["head_node_type"] = "hed"
    with pytest.raises((ValidationError, ValueError)):
        _validate(cfg)


def _space(tmp_path, schedules, name="space.yaml", extra=""):
    f = tmp_path / name
    f.write_text(
        ("" if "epochs:" in extra else "epochs: 8\n") + "schedules: [" + ", ".join(f'"{x}"' for x in schedules) + "]\n"
        "fixed: {lr: 3.0e-4, batch_size: 8, warmup_steps: 2}\n" + extra
    )
    return f


@pytest.fixture
def no_ray():
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


@pytest.mark.slow
def test_node_loss_trial_resumes_on_a_surviving_node(tmp_path, no_ray):
    """Two worker nodes; one is removed while a trial runs on it. Returns the recovery numbers."""
    res = node_loss_scenario(tmp_path)
    assert res["rc"] == 0, res["log"]
    assert res["resumed_from_step"] >= res["last_step_before_loss"] > 0  # from its latest checkpoint, not scratch
    assert res["new_node"] != res["victim_node"]
    assert res["finished_trials"] == res["trials"] == 2
    assert res["exported_trials"] == 2


def node_loss_scenario(tmp_path) -> dict:
    """Shared with bench/node_loss.py: run a 2-trial search on a 3-node local cluster and remove
    the node of the first trial after its second report."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "env_vars": {"RAY_AUTH_MODE": "disabled"}},
    )
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    out = tmp_path / "s"
    space = _space(tmp_path, ["fshift:2x6,1x14", "none:1x20"], extra="epochs: 20\n")
    cmd = [
        sys.executable,
        "-m",
        "c2f_search.cli",
        "search",
        "--space",
        str(space),
        "--data",
        DATA,
        "--trials",
        "2",
        "--depth",
        "1",
        "--out",
        str(out),
        "--address",
        cluster.address,
        "--max-failures",
        "3",
        "--keep-checkpoints",
        "0",
    ]
    log = tmp_path / "driver.log"
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=ENV)
        try:
            victim, t_kill, kill_step = None, None, None
            deadline = time.time() + 300
            while time.time() < deadline and victim is None and p.poll() is None:
                time.sleep(0.5)
                try:
                    rows = load_rows(out).to_pylist()
                except (FileNotFoundError, KeyError):
                    continue
                for tid in sorted({r["trial_id"] for r in rows}):
                    mine = [r for r in rows if r["trial_id"] == tid]
                    if len(mine) >= 2 and not mine[-1]["schedule_done"]:  # running, with a checkpoint
                        node = _node_of(out, tid)
                        victim = next(w for w in workers if w.node_id == node)
                        kill_step, t_kill, victim_trial = mine[-1]["step"], time.time(), tid
                        cluster.remove_node(victim)
                        break
            assert victim is not None, "no trial to interrupt: " + log.read_text()[-2000:]
            rc = p.wait(timeout=400)
        finally:
            if p.poll() is None:
                p.kill()
            cluster.shutdown()
    import json

    rows = [
        json.loads(line)
        for line in (out / "search" / _trial_dir(out, victim_trial) / "result.json").read_text().splitlines()
    ]
    after = [r for r in rows if r["resumed_from_step"] >= 0]
    rows_all = load_rows(out).to_pylist()
    return {
        "rc": rc,
        "log": log.read_text()[-3000:],
        "trials": 2,
        "victim_node": victim.node_id,
        "new_node": after[0]["node_id"] if after else None,
        "resumed_from_step": after[0]["resumed_from_step"] if after else -1,
        "last_step_before_loss": kill_step,
        "steps_per_epoch": rows[0]["step"] // max(1, round(rows[0]["epoch"])),
        "recovery_s": after[0]["attempt_started_at"] - t_kill if after else None,
        "first_report_after_loss_s": after[0]["timestamp"] - t_kill if after else None,
        "finished_trials": len({r["trial_id"] for r in rows_all if r["schedule_done"]}),
        "exported_trials": len({r["trial_id"] for r in export(out)["final"]}),
    }


def _trial_dir(out, trial_id):
    return next(d.name for d in (out / "search").iterdir() if d.is_dir() and trial_id in d.name)


def _node_of(out, trial_id):
    import json

    first = (out / "search" / _trial_dir(out, trial_id) / "result.json").read_text().splitlines()[0]
    return json.loads(first)["node_id"]


@pytest.mark.slow
def test_a_trial_that_keeps_failing_is_infeasible_and_the_search_goes_on(tmp_path, no_ray, monkeypatch):
    from c2f_search.search.runner import SearchSettings, run_search
    from c2f_search.settings import DataSettings

    monkeypatch.setenv("C2F_INJECT_NAN", "fshift:2x1,1x1")
    space = tmp_path / "s.yaml"
    space.write_text("epochs: 2\nschedules: ['none:1x2', 'fshift:2x1,1x1']\nfixed: {lr: 3.0e-4, batch_size: 8}\n")
    st = SearchSettings(
        space=str(space),
        out=str(tmp_path / "o"),
        trials=2,
        max_failures=1,
        data=DataSettings(DATA, None, None, "auto", False, None, None, None, None).resolved(),
        model_kwargs={"depth": 1},
    )
    results = run_search(st)
    assert len(results.errors) == 1 and "loss is nan" in str(results.errors[0])
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{tmp_path / 'o' / 'optuna.db'}")
    by_state = {t.params["schedule"]: t.state for t in study.trials}
    assert by_state == {"none:1x2": optuna.trial.TrialState.COMPLETE, "fshift:2x1,1x1": optuna.trial.TrialState.FAIL}
    res = export(tmp_path / "o")
    assert {r["schedule"] for r in res["final_front"] + res["anytime_front"]} == {"none:1x2"}


@pytest.mark.slow
def test_storage_through_a_pyarrow_filesystem(tmp_path, no_ray):
    from c2f_search.search.runner import SearchSettings, run_search
    from c2f_search.settings import DataSettings

    base = tmp_path / "bucket"
    base.mkdir()
    fs = pafs.SubTreeFileSystem(str(base), pafs.LocalFileSystem())
    st = SearchSettings(
        space=str(_space(tmp_path, ["none:1x1"])),
        out=str(tmp_path / "o"),
        trials=1,
        data=DataSettings(DATA, None, None, "auto", False, None, None, None, None).resolved(),
        model_kwargs={"depth": 1},
        storage="exp",
        epochs=1,
    )
    run_search(st, storage_filesystem=fs)
    assert (base / "exp" / "search").is_dir() and not (tmp_path / "o" / "search").exists()
    rows = load_rows("exp", filesystem=fs).to_pylist()
    assert len(rows) == 1 and rows[0]["schedule_done"] and rows[0]["checkpoint_path"].startswith("exp/search/")
    res = export(
        "exp", tmp_path / "front.parquet", tmp_path / "front.png", rows_path=tmp_path / "rows.parquet", filesystem=fs
    )
    assert len(res["final"]) == 1 and (tmp_path / "front.png").exists()


@pytest.mark.slow
def test_search_level_bad_input_fails_before_any_trial(tmp_path):
    missing = _space(tmp_path, ["none:1x1"], "m.yaml", extra=f"data: {tmp_path / 'nope.json'}\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (["--space", str(missing), "--out", str(tmp_path / "o1")], "nope.json"),
        (
            ["--space", str(_space(tmp_path, ["none:1x1"])), "--data", DATA, "--out", str(blocker / "sub")],
            "cannot write there",
        ),
        (
            [
                "--space",
                str(_space(tmp_path, ["none:1x1"])),
                "--data",
                DATA,
                "--out",
                str(tmp_path / "o3"),
                "--address",
                "127.0.0.1:1",
            ],
            "cannot reach a Ray cluster",
        ),
    ]
    for args, words in cases:
        t = time.time()
        p = subprocess.run(
            [sys.executable, "-m", "c2f_search.cli", "search", *args],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert time.time() - t < 60
    assert not (tmp_path / "o1" / "search").exists() and not (tmp_path / "o3" / "search").exists()
