"""Reliability round 4 (issue 26), one table per class, each case a command a careful user ran: what it must
do now. Real processes, a real Ray search (class F, and the folder D, J and K act on), a real full tmpfs
(class C, as root). Classes A and B (a real Ctrl-C and SIGTERM on confirm, then --resume) are in
tests/search/test_confirm_resume.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import TINY_DATA, grid_space, run_cli
from .helpers import ENV, TRAIN, cli

TINY = ["--data", TINY_DATA, "--depth", "1"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished grid search whose second entry fails (a diverging trial, injected), with the run folder of a
    finished train beside it."""
    root = tmp_path_factory.mktemp("round4")
    space = grid_space(root, ["none:1x2", "fshift:2x1,1x1"])
    env = {**ENV, "C2F_INJECT_NAN": "fshift:2x1,1x1"}
    args = ["search", "--space", str(space), *TINY, "--max-failures", "0", "--out", str(root / "s")]
    r = run_cli(args, root / "s.log", env, 600)
    from c2f_search.cli import main

    assert main([*TRAIN, "--schedule", "avgpool:2x2,1x1", "--out", str(root / "run")]) == 0
    return root, r


def _copy(root: Path, name: str, to: Path) -> Path:
    shutil.copytree(root / name, to / name)
    return to / name


# ------------------------------------------------------------------------------------------------ F
@pytest.mark.slow
def test_F_a_failed_trial_is_counted_and_the_search_exits_1(searched):
    root, r = searched
    assert r.returncode == 1, r.stdout[-3000:]
    assert "trials: 1 finished, 0 pruned/stopped, 1 failed" in r.stdout
    assert "1 trial failed" in r.stdout and "--resume runs it again" in r.stdout


# ------------------------------------------------------------------------------------------------ D
D_CASES = [
    ["--keep-checkpoints", "0"],
    ["--no-reuse-actors"],
    ["--max-failures", "1"],
    ["--metric-target", "0"],
    ["--gpus-per-trial", "0"],
    ["--seed", "0"],  # the default, given: agrees
]


@pytest.mark.slow
@pytest.mark.parametrize("flags", D_CASES, ids=" ".join)
def test_D_a_contradicting_flag_on_resume_is_refused_even_at_0(flags, searched, tmp_path, capsys):
    s = _copy(searched[0], "s", tmp_path)
    agrees = flags == ["--seed", "0"]
    if agrees:  # the search was started with the default seed: given, it agrees; the resume goes on to Ray
        from c2f_search.cli.search import resumed_settings

        assert resumed_settings(s, {"seed": 0}).seed == 0
        return
    rc, err = cli(["search", "--out", str(s), "--resume", *flags], capsys)
    assert rc == 2 and len(err) == 1 and "drop the flag to resume it" in err[0] and flags[0] in err[0], err


# ------------------------------------------------------------------------------------------------ E, G, O
BEFORE_RAY = [  # (flags, what the one line says); none of them starts Ray or writes the folder
    (["--metric-target", "5"], "--metric-target: must be a number in [0, 1]"),
    (["--epochs", "1e-9"], "--epochs 1e-09: a trial's shortest phase would be"),
    (["--cpus-per-trial", "100"], "each trial asks for 100 CPU and 0 GPU, more than this machine has"),
    (["--gpus-per-trial", "1"], "each trial asks for 1 CPU and 1 GPU, more than this machine has"),
    (["@eval_every: 0.001epoch"], "key 'fixed.eval_every' (ast-tiny): '0.001epoch' is less than one step"),
    (["@freqm: 1000"], "key 'fixed.freqm' (ast-tiny): 1000 is wider than the input's 64 mel bins"),
    (["@timem: 100000"], "key 'fixed.timem' (ast-tiny): 100000 is wider than the input's 256 frames"),
    (["@mask_patches: 4"], "masks patches for SSAST pretraining only"),
    (["--stream-workers", "1000", "--features", "stream"], "--stream-workers 1000: more worker processes than"),
    (["--scheduler", "pbt", "--space", "adaptive", "--sampler", "tpe"], "PBT draws its members' values itself"),
    (["--scheduler", "pbt", "--space", "adaptive", "--keep-checkpoints", "3"], "PBT keeps every checkpoint"),
    (["--scheduler", "pbt", "--space", "adaptive", "--trials", "1"], "needs at least 4 members"),
]


@pytest.mark.parametrize("flags, says", BEFORE_RAY, ids=[s[:40] for _, s in BEFORE_RAY])
def test_EGLO_settings_every_trial_would_fail_on_are_refused_before_ray(flags, says, tmp_path, capsys):
    if torch.cuda.device_count() and "--gpus-per-trial" in flags:
        pytest.skip("this machine has a GPU")
    if flags[0].startswith("@"):  # a fixed setting in the space file
        space = tmp_path / "space.yaml"
        space.write_text(
            f"epochs: 2\nschedules: ['none:1x2']\nfixed: {{batch_size: 8, {flags[0][1:]}}}\n",
        )
        flags = ["--space", str(space)]
    elif "--space" not in flags:
        flags = ["--space", "demo", *flags]
    out = tmp_path / "o"
    rc, err = cli(["search", *TINY, "--out", str(out), *flags], capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_G_cluster_resources_are_checked_against_nodes_and_autoscaler_types(tmp_path):
    from c2f_search.errors import SpaceError
    from c2f_search.search.runner import _autoscaler_types, check_fits

    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(
        "available_node_types:\n  head: {resources: {CPU: 2}, max_workers: 0}\n"
        "  gpu: {resources: {CPU: 8, GPU: 1}, max_workers: 4}\n"
    )
    nodes = [{"CPU": 2.0}]
    check_fits({"cpu": 4, "gpu": 1}, nodes + _autoscaler_types(config), "the cluster")  # a GPU node may start
    with pytest.raises(SpaceError, match="4 CPU and 2 GPU, more than the cluster has .*8 CPUs, 1 GPUs"):
        check_fits({"cpu": 4, "gpu": 2}, nodes + _autoscaler_types(config), "the cluster")
    with pytest.raises(SpaceError, match="4 CPU and 1 GPU"):
        check_fits({"cpu": 4, "gpu": 1}, nodes, "the cluster")


# ------------------------------------------------------------------------------------------------ H, I
def test_H_a_lost_last_pt_resumes_from_the_newest_intact_checkpoint(searched, tmp_path, capsys):
    run = _copy(searched[0], "run", tmp_path)
    weights = lambda p: torch.load(p, weights_only=True)["model"]  # noqa: E731
    kept = {p.name: weights(p) for p in (run / "checkpoints").glob("*.pt") if p.name != "last.pt"}
    (run / "checkpoints" / "last.pt").unlink()
    before = (run / "metrics.parquet").read_bytes()
    from c2f_search.cli import main

    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "last.pt is missing; continuing from the newest intact checkpoint" in out, out
    assert "holds no checkpoint yet" not in out
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert pq.read_table(run / "metrics.parquet").to_pylist() == pq.read_table(pa.BufferReader(before)).to_pylist()
    for name, sd in kept.items():  # nothing was trained again: every kept checkpoint holds its weights
        assert all(torch.equal(sd[k], v) for k, v in weights(run / "checkpoints" / name).items()), name


I_CASES = [
    ("notstate", "not a c2f-search training state", "--init"),
    ("damaged_beside_notstate", "no intact checkpoint is left beside it", "--overwrite"),
]


@pytest.mark.parametrize("case, says, fix", I_CASES, ids=[c for c, _, _ in I_CASES])
def test_I_a_file_that_is_no_training_state_is_named(case, says, fix, tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"config": 1, "weights": torch.zeros(2)}, ck / "notstate.pt")
    target = ck / "notstate.pt"
    if case == "damaged_beside_notstate":  # the newest intact file beside a damaged one is no state: not offered
        target = ck / "damaged.pt"
        target.write_bytes(b"PK\x03\x04 cut")
    rc, err = cli(
        [*TRAIN, "--schedule", "none:1x1", "--resume-from", str(target), "--out", str(tmp_path / "o")], capsys
    )
    assert rc == 2 and len(err) == 1 and says in err[0] and fix in err[0], err
    assert "notstate.pt: continue from it" not in err[0]


# ------------------------------------------------------------------------------------------------ J
J_RUN = [  # an edit of a run's config.json, on --resume of a run stopped before its first checkpoint
    ('del d["config"]', "key 'config' is missing"),
    ('d["config"]["lr"] = -1', "key 'config.lr': must be a finite number > 0"),
    ('d["config"]["epochs"] = 1', "key 'config.epochs': unknown setting"),
    ('d["config"]["schedule"] = "bogus"', "key 'config.schedule'"),
    ('d["data"]["norm"] = [0, "a"]', "key 'data.norm' must be [mean, std]"),
    ('d["data"]["num_mel_bins"] = -3', "key 'data.num_mel_bins' must be an integer >= 1"),
    ('d["resolved"] = 5', "key 'resolved' must be a JSON object"),
]
J_SEARCH = [  # an edit of search.json, on --resume and on pareto
    ('d["resources"]["cpu"] = -1', "key 'resources.cpu' must be a number >= 0"),
    ('d["data"]["norm"] = [0, "a"]', "key 'data.norm' must be [mean, std]"),
    ('d["scheduler"] = "bogus"', "key 'scheduler' must be one of fifo, asha, moasha, pbt"),
    ('d["epochs"] = -1', "key 'epochs' must be a number > 0"),
    ('d["keep_checkpoints"] = -5', "key 'keep_checkpoints' must be an integer >= 0"),
    ('d["sampler"] = 3', "key 'sampler' must be a string"),
]


def _edit(path: Path, code: str) -> None:
    d = json.loads(path.read_text())
    exec(code, {"d": d})
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("code, says", J_RUN, ids=[c for c, _ in J_RUN])
def test_J_a_hand_edited_config_json_is_named(code, says, searched, tmp_path, capsys):
    run = _copy(searched[0], "run", tmp_path)
    shutil.rmtree(run / "checkpoints")
    _edit(run / "config.json", code)
    rc, err = cli(["train", "--out", str(run), "--resume"], capsys)
    assert rc == 2 and len(err) == 1 and says in err[0] and "config.json" in err[0], err


@pytest.mark.slow
@pytest.mark.parametrize("code, says", J_SEARCH, ids=[c for c, _ in J_SEARCH])
def test_J_a_hand_edited_search_json_is_named(code, says, searched, tmp_path, capsys):
    s = _copy(searched[0], "s", tmp_path)
    _edit(s / "search.json", code)
    for args in (["search", "--out", str(s), "--resume"], ["pareto", str(s)]):
        rc, err = cli(args, capsys)
        assert rc == 2 and len(err) == 1 and says in err[0] and "search.json" in err[0], (args, err)


# ------------------------------------------------------------------------------------------------ K
@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["searcher-state-", "experiment_state-", "search_gen_state-"])
def test_K_a_damaged_ray_state_file_is_named_on_resume(prefix, searched, tmp_path, capsys):
    s = _copy(searched[0], "s", tmp_path)
    (f,) = [p for p in (s / "search").iterdir() if p.name.startswith(prefix)]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rc, err = cli(["search", "--out", str(s), "--resume"], capsys)
    if prefix == "search_gen_state-" and rc != 2:
        pytest.fail(f"{f.name} cut in half was not refused: {err}")
    assert rc == 2 and len(err) == 1 and f.name in err[0] and "damaged" in err[0], err


# ------------------------------------------------------------------------------------------------ L (train)
L_TRAIN = [
    (["--schedule", "none:1x1e-9"], "is less than one optimizer step"),
    (["--schedule", "fshift:2xauto,1x2", "--transition", "plateau:delta=nan"], "delta=nan is not a finite number"),
    (["--schedule", "fshift:2xauto,1x2", "--transition", "plateau:delta=inf"], "delta=inf is not a finite number"),
    (["--schedule", "fshift:2xauto,1x2", "--transition", "plateau:patience=2,patience=3"], "patience is given twice"),
    (["--schedule", "fshift:2xauto,1x2", "--transition", "plateau:budget=1"], "leaves nothing for the coarse phases"),
    (["--schedule", "none:1x2", "--weight-averaging", "from:nan"], "write from:E"),
    (["--schedule", "none:1x2", "--weight-averaging", "from:inf"], "write from:E"),
    (["--schedule", "none:1x2", "--weight-averaging", "from:100"], "starts at or after the schedule's end"),
    (["--schedule", "none:1x1", "--freqm", "1000"], "1000 is wider than the input's 64 mel bins"),
    (["--schedule", "none:1x1", "--timem", "100000"], "100000 is wider than the input's 256 frames"),
    (["--schedule", "none:1x1", "--features", "stream", "--stream-workers", "1000"], "more worker processes"),
    (["--schedule", "none:1x1", "--eval-every", "0"], "evaluate every N >= 1 steps"),  # O
    (["--schedule", "none:1x1", "--eval-every", "0.001epoch"], "less than one step (5 steps per epoch)"),  # E
]


@pytest.mark.parametrize("flags, says", L_TRAIN, ids=[" ".join(f[1:]) for f, _ in L_TRAIN])
def test_L_nonsense_is_refused_in_one_line(flags, says, tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = cli([*TRAIN, *flags, "--out", str(out)], capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert "1000000" not in err[0]
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_L_a_target_epoch_factor_below_one_step_is_refused_before_ray(searched, tmp_path, capsys):
    s = _copy(searched[0], "s", tmp_path)
    rc, err = cli(["confirm", str(s), "--target", "t", "--epochs-factor", "1e-9", "--top", "1", "--seeds", "1"], capsys)
    assert rc == 2 and len(err) == 1 and "less than one optimizer step" in err[0], err
    assert "confirm --target t: its budget of 2e-09 epochs" in err[0], err
    assert not (s / "confirm").exists()


# ------------------------------------------------------------------------------------------------ M
M_CASES = [  # (schedules, the saving printed on the coarse-to-fine line)
    (["avgpool:2x20,coarse-only"], "52.4%"),
    (["avgpool:2x20,coarse-only", "none:1x20"], "52.4%"),
    (["fshift:4x5,1x15"], "19.2%"),
    (["fshift:4x5,1x15", "none:1x20"], "19.2%"),
]


@pytest.mark.parametrize("schedules, saving", M_CASES, ids=[" + ".join(s) for s, _ in M_CASES])
def test_M_flops_gives_the_same_saving_alone_and_beside_the_baseline(schedules, saving, capsys):
    from c2f_search.cli import main

    assert main(["flops", "--json"] + [x for s in schedules for x in ("--schedule", s)]) == 0
    rows = json.loads(capsys.readouterr().out)["schedules"]
    assert f"{100 * rows[0]['saving_vs_none']:.1f}%" == saving, rows[0]


# ------------------------------------------------------------------------------------------------ N
N_CASES = [
    (["--batch", "0"], "--batch: 0: must be >= 1"),
    (["--clips", "0"], "--clips: 0: must be >= 1"),
    (["--epochs", "0"], "--epochs: 0: must be >= 1"),
    (["--mel", "0"], "--mel: 0: must be >= 16"),
    (["--depth", "-1"], "--depth: -1: must be >= 1"),
    (["--depth", "0"], "--depth: 0: must be >= 1"),
    (["--frames", "100"], "--frames: 100: must be >= 64 and a multiple of 64"),
    (["--models", "bogus"], "invalid choice: 'bogus'"),
    (["--clips", "4"], "--clips 4: fewer training clips than one batch"),
]


@pytest.mark.parametrize("flags, says", N_CASES, ids=[" ".join(f) for f, _ in N_CASES])
def test_N_gpu_step_refuses_odd_flags_in_one_line(flags, says):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--device", "cpu", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and says in r.stderr, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ C
@pytest.mark.slow
def test_C_a_full_disk_at_the_lock_is_one_line_and_leaves_no_lock(searched, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        s = _copy(searched[0], "s", disk)
        (disk / "fill").write_bytes(b"")
        with open(disk / "fill", "wb") as f:  # fill what is left
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        cases = [
            [*TRAIN, "--schedule", "none:1x1", "--out", str(disk / "run")],
            ["search", "--space", "demo", *TINY, "--out", str(disk / "s2")],
            ["confirm", str(s), "--top", "1", "--seeds", "1"],
            ["search", "--out", str(s), "--resume"],
        ]
        for args in cases:
            rc, err = cli(args, capsys)
            assert rc == 2 and len(err) == 1, (args, err)
            assert "not enough disk space on the file system of" in err[0] and "free some space" in err[0], err
            assert not list(disk.rglob(".c2f-search.lock")), args
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ------------------------------------------------------------------------------------------------ report
def test_report_titles_the_test_front_by_its_own_hypervolume_and_the_baseline_row_as_reference():
    from c2f_search.analysis.pareto import plot_title
    from c2f_search.analysis.seeds import holds_text
    from c2f_search.analysis.transfer import holds_cell

    res = {"hypervolume_final": 7.0, "reference_point": {"val_metric": 0.0, "train_flops": 10e9}}
    front = [{"val_metric": 0.5, "test_metric": 0.25, "train_flops": 2e9}]
    assert "hypervolume (final, validation) = 7 " in plot_title(res, front, "val", "accuracy")
    test = plot_title(res, front, "test", "accuracy")  # (10 - 2) GFLOPs x 0.25
    assert "hypervolume of the final front's points on test = 2 " in test and "= 7" not in test

    assert holds_text({"is_baseline": True, "holds_every_seed": False}) == "reference"
    assert holds_text({"is_baseline": False, "holds_every_seed": False}) == "no"
    assert holds_cell({"target_is_baseline": True, "target_holds_every_seed": False}, "target") == "ref"
    assert holds_cell({"proxy_is_baseline": False, "proxy_holds_every_seed": True}, "proxy") == "yes"
