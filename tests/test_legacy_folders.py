"""Folders made by c2f-search 0.2.0, before the package was restructured (tests/fixtures/legacy-0.2.0):
its checkpoints still resume and fork, its run folder's config.json still gives every setting, and its
search folder still exports, reports and resumes (Ray unpickles classes that have moved since)."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from c2f_search.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-0.2.0"
DATA = "builtin:events?train=40&val=20&seed=3"


def _copy(tmp_path, what: str) -> Path:
    dst = tmp_path / what
    shutil.copytree(FIXTURE / what, dst)
    return dst


def test_a_legacy_run_resumes_and_ends_where_the_uninterrupted_run_ended(tmp_path):
    run = _copy(tmp_path, "run")
    shutil.copy(run / "checkpoints" / "phase1-C2.pt", run / "checkpoints" / "last.pt")
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    before = pq.read_table(FIXTURE / "run" / "metrics.parquet").to_pylist()
    after = pq.read_table(run / "metrics.parquet").to_pylist()
    keys = ("step", "C", "phase", "val_metric", "train_loss", "train_flops", "schedule_done")
    assert [{k: r[k] for k in keys} for r in after] == [{k: r[k] for k in keys} for r in before]
    # the record it rewrote reads the old data settings in the one schema
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["train"] == DATA and data["cache_dir"] == "auto" and data["norm"] is not None


def test_a_legacy_checkpoint_forks_a_longer_schedule(tmp_path):
    out = tmp_path / "longer"
    assert (
        main(
            [
                "train",
                "--resume-from",
                str(FIXTURE / "run" / "checkpoints" / "phase1-C2.pt"),
                "--schedule",
                "fshift:2x1,1x2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert rows[0]["step"] == 5 and rows[-1]["epoch"] == 3.0 and rows[-1]["schedule_done"]


def _search(tmp_path) -> Path:
    """The legacy search, its recorded paths pointed at this checkout and at the regenerated data."""
    from c2f_search.data import builtin_events

    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root)
    search = root / "search"
    s = json.loads((search / "search.json").read_text())
    data = builtin_events.materialize(DATA)
    s["space"] = str(root / "tiny.yaml")
    s["data"].update(
        train=str(data / "train.json"),
        val=str(data / "val.json"),
        labels=str(data / "class_labels_indices.csv"),
        cache_dir=str(builtin_events.cache_root() / "features"),
    )
    (search / "search.json").write_text(json.dumps(s, indent=1))
    return search


def test_a_legacy_search_exports_the_front_it_had_and_reports(tmp_path, capsys):
    search = _search(tmp_path)
    was = (search / "summary.txt").read_text()
    old_front = pq.read_table(search / "front.parquet")
    assert main(["pareto", str(search)]) == 0
    assert (search / "summary.txt").read_text() == was
    new_front = pq.read_table(search / "front.parquet")
    columns = [c for c in old_front.column_names if c != "checkpoint_path"]  # the fixture keeps no checkpoint
    assert new_front.select(columns).to_pylist() == old_front.select(columns).to_pylist()
    assert main(["report", str(search)]) == 0
    assert "none:1x1" in (search / "report.html").read_text()


@pytest.mark.slow
def test_a_legacy_search_resumes_with_more_trials(tmp_path, capsys):
    search = _search(tmp_path)
    assert main(["search", "--out", str(search), "--resume", "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "raising the search from 2 to 3 trials" in out
    assert "trials: 3 finished, 0 pruned/stopped, 0 failed" in (search / "summary.txt").read_text()
