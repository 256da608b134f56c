"""A search in the paper's regime: every trial fine-tunes from a pretrained init (real Ray, real trials)."""

import json
import shutil
import subprocess
import time

import pytest

from c2f_search.models.pretrained import InitFile

from ..cli.helpers import CLI, ENV, TRAIN, cli
from ..conftest import TINY_DATA, grid_space, kill_ray_session_of, run_cli

pytestmark = pytest.mark.slow


def _pretrain(root, capsys, seed="0"):
    out = root / f"pre{seed}"
    rc, err = cli([*TRAIN, "--schedule", "none:1x3", "--lr", "1e-3", "--seed", seed, "--out", str(out)], capsys)
    assert rc == 0, err
    return out / "checkpoints" / "final.pt"


def _search(space, out, init, *extra):
    return [
        "search", "--space", str(space), "--data", TINY_DATA, "--depth", "1", "--out", str(out),
        "--init", str(init), "--max-failures", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from c2f_search.cli import main

    root = tmp_path_factory.mktemp("pretrained")

    pre = root / "pre" / "checkpoints" / "final.pt"
    assert main([*TRAIN, "--schedule", "none:1x3", "--lr", "1e-3", "--out", str(root / "pre")]) == 0
    space = grid_space(root, ["none:1x2", "fshift:2x1,1x1"])
    r = run_cli(_search(space, root / "s", pre, "--cpus-per-trial", "1"), root / "s.log", ENV, 600)
    assert r.returncode == 0, r.stdout[-3000:]
    return root, pre, space


def test_every_trial_starts_from_the_init_and_its_hash_is_recorded(searched, fresh_ray):
    from c2f_search.analysis.rows import load_rows
    from c2f_search.search.space import load_space
    from c2f_search.settings import SearchSettings
    from c2f_search.train.run import Run
    from trainables import trial_config

    root, pre, space = searched
    settings = SearchSettings.load(root / "s")
    assert settings.init["sha256"] == InitFile.describe(str(pre)).sha256
    assert settings.init["models"] == ["ast-tiny"] and settings.init["size"] == pre.stat().st_size
    data = settings.data.load()
    rows = load_rows(root / "s").to_pylist()
    setup = {"model": "ast-tiny", "fixed": load_space(str(space)).fixed, "model_kwargs": {"depth": 1}}
    trials = {r["trial_id"] for r in rows}
    assert len(trials) == 2
    for tid in trials:
        first = min((r for r in rows if r["trial_id"] == tid), key=lambda r: r["step"])
        config = json.loads(first["config"])
        losses = {}
        for name, init in (("init", settings.init), ("scratch", None)):
            run = Run(trial_config(config, {**setup, "init": init}), data, "cpu")
            losses[name] = next(iter(run.records()))["val_loss"]
        assert first["val_loss"] == pytest.approx(losses["init"], rel=1e-4)
        assert abs(first["val_loss"] - losses["scratch"]) > 1e-3, (first["val_loss"], losses)


def test_confirm_at_a_target_takes_an_init(searched, fresh_ray):
    root, pre, _ = searched
    r = run_cli(
        ["confirm", str(root / "s"), "--top", "1", "--seeds", "1", "--target", "t", "--init", str(pre)],
        root / "c.log",
        ENV,
        600,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    marker = json.loads((root / "s" / "confirm" / "t" / "target.json").read_text())
    assert marker["target"]["init"] == str(pre)
    assert (root / "s" / "confirm" / "t" / "confirm.txt").is_file()


def test_an_init_changed_mid_search_fails_the_trials_that_load_it(tmp_path, capsys, fresh_ray):
    pre, other = _pretrain(tmp_path, capsys, "0"), _pretrain(tmp_path, capsys, "1")
    init = tmp_path / "init.pt"
    shutil.copy(pre, init)
    space = grid_space(tmp_path, ["none:1x2", "fshift:2x1,1x1", "fshift:4x1,1x1"])
    log = tmp_path / "s.log"
    # one trial at a time: the init changes after the first trial, before the last one starts
    with open(log, "w") as f:
        p = subprocess.Popen([*CLI, *_search(space, tmp_path / "s", init, "--cpus-per-trial", "2")], stdout=f,
                             stderr=subprocess.STDOUT, env=ENV)  # fmt: skip
    try:
        t = time.time()
        while " finished" not in log.read_text() and p.poll() is None and time.time() - t < 300:
            time.sleep(0.1)
        shutil.copy(other, init)
        p.wait(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
        kill_ray_session_of(p.pid)
    failed = [line for line in log.read_text().splitlines() if " FAILED: " in line]
    assert failed and all("is not the file the search recorded" in line for line in failed), log.read_text()[-3000:]
    for args, says in [
        (["--resume"], "is not the file the search recorded"),
        (["--resume", "--init", str(other)], "from another init"),
    ]:
        rc, err = cli(["search", "--out", str(tmp_path / "s"), *args], capsys)
        assert rc == 2 and len(err) == 1 and says in err[0], err
    rc, err = cli(["confirm", str(tmp_path / "s")], capsys)
    assert rc == 2 and "is not the file the search recorded" in err[-1], err


def test_a_search_starts_from_a_hugging_face_folder(tmp_path, fresh_ray):
    from c2f_search.settings import SearchSettings

    from ..models.test_pretrained import _hf_folders

    _, v4, _ = _hf_folders(tmp_path, num_hidden_layers=1)
    space = grid_space(tmp_path, ["none:1x1"])
    r = run_cli(_search(space, tmp_path / "s", v4), tmp_path / "s.log", ENV, 600)
    assert r.returncode == 0, r.stdout[-3000:]
    init = SearchSettings.load(tmp_path / "s").init
    assert init["uri"] == str(v4) and init["models"] == ["ast-tiny"]
    assert init["sha256"] == InitFile.describe(str(v4)).sha256
