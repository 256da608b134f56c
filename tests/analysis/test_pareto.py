import pyarrow as pa
import pytest

from c2f_search.analysis.pareto import analyse, hypervolume_2d, pareto_front, summary_text
from c2f_search.analysis.rows import ROW_COLUMNS, with_schedule_columns
from c2f_search.schema import keep_checkpoint


def test_front_with_ties_and_duplicates():
    pts = [
        (0.5, 10.0),
        (0.6, 20.0),
        (0.55, 20.0),
        (0.6, 20.0),
        (0.4, 5.0),
        (0.7, 40.0),
        (0.65, 50.0),
        (0.5, 10.0),
        (float("nan"), 1.0),
        (0.4, 5.0),
    ]
    assert pareto_front(pts) == [4, 0, 1, 5]
    assert pareto_front([(0.5, 1.0), (0.5, 2.0)]) == [0]  # equal metric, more FLOPs: dominated
    assert pareto_front([]) == []


def test_hypervolume_by_hand():
    pts = [(0.5, 10), (0.6, 20), (0.4, 5), (0.7, 40), (0.65, 50)]
    # [5,10)*0.4 + [10,20)*0.5 + [20,40)*0.6 + [40,100)*0.7
    assert hypervolume_2d(pts, (0, 100)) == pytest.approx(2 + 5 + 12 + 42)
    assert hypervolume_2d(pts + pts, (0, 100)) == pytest.approx(61)
    assert hypervolume_2d(pts, (0.65, 100)) == pytest.approx(0.05 * 60)
    assert hypervolume_2d([(0.9, 200)], (0, 100)) == 0


def _row(tid, step, m, f, done, method="fshift", status="finished", phase=1, C=1, schedule=None, seed=0):
    r = dict.fromkeys(ROW_COLUMNS)
    r.update(
        trial_id=tid,
        schedule=schedule or ("none:1x3" if method == "none" else f"{method}:2x1,1x2"),
        method=method,
        step=step,
        epoch=float(step),
        phase=phase,
        C=C,
        val_metric=m,
        train_flops=f * 1e9,
        train_time_s=f / 10,
        schedule_done=done,
        status=status,
        metric_name="accuracy",
        phase_end=done,
        seed=seed,
    )
    return r


def _table(rows: list[dict]) -> pa.Table:
    """Rows as the loader gives them: with what each schedule says."""
    return pa.Table.from_pylist(with_schedule_columns(rows))


def _histories():
    return [
        # the baseline peaks at epoch 2 and falls at epoch 3: the reference is epoch 2, not the last one
        _row("base", 1, 0.50, 10, False, "none"),
        _row("base", 2, 0.62, 20, False, "none"),
        _row("base", 3, 0.58, 30, True, "none"),
        # a weaker baseline trial (another learning rate): not the reference
        _row("base2", 1, 0.40, 10, False, "none"),
        _row("base2", 2, 0.61, 20, False, "none"),
        _row("base2", 3, 0.61, 30, True, "none"),
        # its coarse phase (C=2) beats the baseline at 5 GFLOPs; that evaluation never counts
        _row("a", 1, 0.70, 5, False, phase=1, C=2),
        _row("a", 2, 0.60, 12, False, phase=2),
        _row("a", 3, 0.63, 19, True, phase=2),
        # never reaches 0.62 in its final phase
        _row("b", 1, 0.30, 4, False, phase=1, C=2),
        _row("b", 2, 0.55, 11, False, phase=2),
        _row("b", 3, 0.60, 18, True, phase=2),
        _row("p", 1, 0.90, 3, False, status="pruned", phase=1, C=2),  # stopped early: anytime only
    ]


def test_baseline_reference_is_the_best_epoch_of_the_best_baseline():
    res = analyse(_table(_histories()), ref=(0.0, 40e9))
    b = res["baseline"]
    assert (b["trial_id"], b["epoch"], b["val_metric"], b["train_flops"]) == ("base", 2.0, 0.62, 20e9)
    assert {r["trial_id"] for r in res["final"]} == {"base", "base2", "a", "b"}
    assert res["counts"] == {"finished": 4, "pruned": 1, "running": 0, "error": 0}


def test_budget_saving_counts_only_the_final_phase():
    res = analyse(_table(_histories()))
    q = {x["trial_id"]: x for x in res["table"]}
    # a first reaches 0.62 in its C=1 phase at epoch 3 (19 GFLOPs), not at its C=2 epoch (5 GFLOPs)
    assert q["a"]["budget_reached"] and q["a"]["budget_epoch"] == 3.0
    assert q["a"]["flops_saving"] == pytest.approx(1 - 19 / 20)
    assert q["a"]["time_saving"] == pytest.approx(1 - 1.9 / 2.0)
    assert q["a"]["convergence_delta"] == pytest.approx(0.63 - 0.62)
    assert q["b"]["budget_reached"] is False and q["b"]["flops_saving"] is None
    assert q["b"]["convergence_delta"] == pytest.approx(0.60 - 0.62)
    assert q["base"]["flops_saving"] == pytest.approx(0.0) and q["base"]["convergence_delta"] == pytest.approx(0)
    assert q["base2"]["budget_reached"] is False  # 0.61 < 0.62
    text = summary_text(res)
    assert "did not reach" in text and "+5.0%" in text and "+75" not in text
    assert "1 of 2 finished coarse-to-fine schedules reached" in text


def test_fronts_final_and_anytime():
    res = analyse(_table(_histories()), ref=(0.0, 40e9))
    assert [r["trial_id"] for r in res["final_front"]] == ["b", "a"]
    # the anytime front holds the coarse checkpoints, labelled with their C, and claims no saving
    assert [(r["trial_id"], r["C"]) for r in res["anytime_front"]] == [("p", 2)]
    assert "C=2  phase 1" in summary_text(res)
    assert all("flops_saving" not in r for r in res["anytime_front"])


def test_anytime_front_marks_token_dropping_checkpoints_as_full_models():
    rows = _histories() + [
        _row("t", 1, 0.95, 2, False, "tpatchout", status="pruned", phase=1, C=2),
        _row(
            "m",
            1,
            0.97,
            2.5,
            False,
            "avgpool+tpatchout",
            status="pruned",
            phase=1,
            C=4,
            schedule="avgpool:4x1,tpatchout:2x1,1x1",
        ),
    ]
    res = analyse(_table(rows), ref=(0.0, 40e9))
    assert [(r["trial_id"], r["C"], r["full_model"]) for r in res["anytime_front"]] == [("t", 2, True), ("m", 4, False)]
    text = summary_text(res)
    line = {ln.split()[0]: ln for ln in text.splitlines() if "  C=" in ln}
    assert line["tpatchout:2x1,1x2"].endswith("2 GFLOPs  full model")
    assert line["avgpool:4x1,tpatchout:2x1,1x1"].endswith("2.5 GFLOPs  needs input compressed by 4")


def test_no_baseline_no_saving():
    rows = [r for r in _histories() if not r["trial_id"].startswith("base")]
    res = analyse(_table(rows))
    assert res["baseline"] is None and all(q["flops_saving"] is None for q in res["table"])
    assert "No baseline trial finished" in summary_text(res)


def test_checkpoints_the_front_needs_are_marked():
    h = [
        dict(phase=1, C=2, val_metric=0.7, phase_end=False),
        dict(phase=1, C=2, val_metric=0.5, phase_end=True),
        dict(phase=2, C=1, val_metric=0.4, phase_end=False),
        dict(phase=2, C=1, val_metric=0.6, phase_end=False),
        dict(phase=2, C=1, val_metric=0.6, phase_end=False),
        dict(phase=2, C=1, val_metric=0.65, phase_end=True),
    ]
    assert [keep_checkpoint(h[: k + 1], 1) for k in range(len(h))] == [False, True, True, True, False, True]


def test_reports_that_result_json_lost_are_read_from_progress_csv(tmp_path):
    """A PBT member's restart can drop unsynced lines of Tune's result.json; progress.csv keeps them."""
    import csv
    import json

    from c2f_search.analysis.rows import load_rows
    from c2f_search.schema import RECORD_FIELDS

    trial = tmp_path / "search" / "train_schedule_0"
    trial.mkdir(parents=True)

    def report(step, done):
        return {
            **{k: None for k in RECORD_FIELDS},
            "schedule": "fshift:2x1,1x1",
            "C": 1,
            "step": step,
            "epoch": step / 5,
            "val_metric": 0.1 * step,
            "metric_name": "accuracy",
            "train_flops": 1e9 * step,
            "phase_end": done,
            "schedule_done": done,
            "averaged": False,
            "trial_id": "t0",
            "lr": 1e-4,
        }

    reports = [report(s, s == 15) for s in (5, 10, 15)]
    (trial / "result.json").write_text(json.dumps({**reports[0], "config": {"lr": 1e-4}}) + "\n")  # two lost
    with open(trial / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(reports[0]))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in reports)
    (trial / "params.json").write_text(json.dumps({"lr": 1e-4, "schedule": "fshift:2x1,1x1"}))
    rows = load_rows(tmp_path).to_pylist()
    assert [r["step"] for r in rows] == [5, 10, 15] and rows[-1]["schedule_done"] is True
    assert all(r["status"] == "finished" for r in rows) and rows[2]["val_metric"] == pytest.approx(1.5)
    assert json.loads(rows[2]["config"])["schedule"] == "fshift:2x1,1x1" and rows[2]["C"] == 1


def test_a_running_trial_is_not_called_pruned(tmp_path):
    """Tune's experiment state says which unfinished trials run (or were interrupted) and which a scheduler
    stopped; only the latter are pruned."""
    import json

    from c2f_search.analysis.rows import load_rows
    from c2f_search.schema import RECORD_FIELDS

    from ..conftest import craft_search

    craft_search(tmp_path)
    for tid in ("run1", "stop1"):
        trial = tmp_path / "search" / f"train_schedule_{tid}"
        trial.mkdir()
        rec = {
            **dict.fromkeys(RECORD_FIELDS),
            "schedule": "fshift:2x1,1x1",
            "method": "fshift",
            "phase": 1,
            "C": 2,
            "epoch": 1.0,
            "step": 10,
            "val_metric": 0.2,
            "metric_name": "accuracy",
            "train_flops": 1e9,
            "train_time_s": 1.0,
            "phase_end": True,
            "schedule_done": False,
            "averaged": False,
            "trial_id": tid,
        }
        (trial / "result.json").write_text(json.dumps(rec) + "\n")
    # Tune's layout: trial_data holds [trial state as JSON text, runtime metadata] per trial
    state = {
        "trial_data": [
            [json.dumps({"trial_id": t, "status": s}), "{}"]
            for t, s in (("base", "TERMINATED"), ("c2f", "TERMINATED"), ("run1", "RUNNING"), ("stop1", "TERMINATED"))
        ]
    }
    (tmp_path / "search" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    status = {r["trial_id"]: r["status"] for r in load_rows(tmp_path).to_pylist()}
    assert status == {"base": "finished", "c2f": "finished", "run1": "running", "stop1": "pruned"}
    res = analyse(load_rows(tmp_path))
    assert summary_text(res).splitlines()[0] == (
        "trials: 2 finished, 1 pruned/stopped, 1 running or interrupted (--resume continues them), 0 failed"
    )


def test_a_step_reported_again_by_a_dropped_lineage_keeps_the_row_that_ends_the_schedule(tmp_path):
    """A PBT member that copied another reports a step its dropped lineage also reported; the row that ends
    the schedule stands, whichever of the two Tune wrote last."""
    import json

    from c2f_search.analysis.rows import load_rows

    from ..conftest import craft_search

    craft_search(tmp_path)
    f = tmp_path / "search" / "train_schedule_1" / "result.json"
    lines = [json.loads(x) for x in f.read_text().splitlines()]
    end = lines[-1]
    assert end["schedule_done"] and end["C"] == 1
    f.write_text(f.read_text() + json.dumps({**end, "C": 2, "schedule_done": False, "val_metric": 0.1}) + "\n")
    mine = [r for r in load_rows(tmp_path).to_pylist() if r["trial_id"] == end["trial_id"]]
    last = [r for r in mine if r["step"] == end["step"]]
    assert (
        len(last) == 1 and last[0]["schedule_done"] and last[0]["C"] == 1 and last[0]["val_metric"] == end["val_metric"]
    )
    assert {r["status"] for r in mine} == {"finished"}


def test_a_final_report_lost_from_result_json_is_taken_from_tunes_experiment_state(tmp_path):
    """A PBT member that restarts after copying another can lose its last report from result.json (Tune's JSON
    logger copies the file back from storage); the experiment state Tune saves keeps each trial's last report."""
    import json

    from c2f_search.analysis.rows import load_rows

    from ..conftest import craft_search

    craft_search(tmp_path)
    result = tmp_path / "search" / "train_schedule_1" / "result.json"
    lines = result.read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["schedule_done"]
    result.write_text(lines[0] + "\n")  # the member's file lost its final report
    assert {r["trial_id"]: r["status"] for r in load_rows(tmp_path).to_pylist()}["c2f"] == "pruned"
    state = {
        "trial_data": [[json.dumps({"trial_id": "c2f", "status": "TERMINATED"}), json.dumps({"last_result": last})]]
    }
    (tmp_path / "search" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    rows = [r for r in load_rows(tmp_path).to_pylist() if r["trial_id"] == "c2f"]
    assert [(r["step"], r["status"], r["schedule_done"]) for r in rows] == [
        (10, "finished", False),
        (20, "finished", True),
    ]


def test_a_trial_is_failed_by_tunes_state_not_by_an_error_file_it_recovered_from(tmp_path):
    """Tune appends to error.txt at every failure, also one it retried: its experiment state decides."""
    import json

    from c2f_search.analysis.pareto import analyse
    from c2f_search.analysis.rows import load_rows

    from ..conftest import craft_search

    def crafted(name, baseline_done=True):
        root = craft_search(tmp_path / name, baseline_done=baseline_done)
        for k, tid in enumerate(("base", "c2f")):
            (root / "search" / f"train_schedule_{k}").rename(root / "search" / f"train_schedule_{tid}_{k}_x")
        return root

    def counts(root, states):
        trials = [[json.dumps({"trial_id": t, "status": s}), json.dumps({"last_result": {}})] for t, s in states]
        (root / "search" / "experiment_state-1.json").write_text(json.dumps({"trial_data": trials}))
        return analyse(load_rows(root))["counts"]

    root = crafted("s")
    (root / "search" / "train_schedule_c2f_1_x" / "error.txt").write_text("RuntimeError: node lost\n")
    lost = root / "search" / "train_schedule_lost_2_x"  # failed before its first report
    lost.mkdir()
    (lost / "error.txt").write_text("RuntimeError: boom\n")
    (lost / "result.json").write_text("")
    c = counts(root, [("base", "TERMINATED"), ("c2f", "TERMINATED"), ("lost", "ERROR")])
    assert (c["finished"], c["error"]) == (2, 1)
    c = counts(root, [("base", "TERMINATED"), ("c2f", "TERMINATED"), ("lost", "TERMINATED")])
    assert (c["finished"], c["error"]) == (2, 0)
    root = crafted("unfinished", baseline_done=False)  # the baseline stopped without an error file: the state says
    c = counts(root, [("base", "ERROR"), ("c2f", "TERMINATED")])
    assert (c["finished"], c["error"]) == (1, 1)


def test_an_imported_front_point_whose_folder_moved_names_the_folder_to_put_back(tmp_path):
    """--test evaluates every final-front point from its checkpoint; one imported by --warm-start lives in the
    earlier search's folder, and if that folder has moved the error says so instead of pyarrow's."""
    from c2f_search.analysis.pareto import test_metrics
    from c2f_search.cli.search import search_settings
    from c2f_search.errors import NoResults

    from ..conftest import TINY_DATA

    test = TINY_DATA.replace("seed=3", "seed=4")  # other clips
    search_settings({"space": "demo", "data": TINY_DATA, "test": test}, tmp_path).save()
    gone = tmp_path / "earlier"
    point = {
        "trial_id": "a",
        "step": 3,
        "checkpoint_path": f"{gone}/search/a/checkpoint_000002",
        "warm_start": str(gone),
    }
    with pytest.raises(NoResults, match=rf"imported by --warm-start from {gone}: put that folder back there"):
        test_metrics(tmp_path, {"final_front": [point], "baseline": None})
    with pytest.raises(NoResults, match="restore the search folder's checkpoints"):
        test_metrics(tmp_path, {"final_front": [{**point, "warm_start": None}], "baseline": None})
