import pyarrow as pa
import pytest

from c2f_search.pareto import ROW_COLUMNS, analyse, hypervolume_2d, pareto_front


def test_front_with_ties_and_duplicates():
    pts = [(0.5, 10.0), (0.6, 20.0), (0.55, 20.0), (0.6, 20.0), (0.4, 5.0), (0.7, 40.0), (0.65, 50.0),
           (0.5, 10.0), (float("nan"), 1.0), (0.4, 5.0)]
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


def _row(tid, step, m, f, done, method="fshift", status="finished"):
    r = dict.fromkeys(ROW_COLUMNS)
    r.update(trial_id=tid, schedule="none:1x3" if method == "none" else f"{method}:2x1,1x1", method=method, step=step, val_metric=m, train_flops=f * 1e9,
             schedule_done=done, status=status, metric_name="accuracy")
    return r


def test_analyse_final_anytime_baseline_saving():
    rows = pa.Table.from_pylist([
        _row("base", 1, 0.50, 10, False, "none"), _row("base", 2, 0.60, 20, False, "none"),
        _row("base", 3, 0.60, 30, True, "none"),
        _row("a", 1, 0.62, 8, False), _row("a", 2, 0.65, 15, True),
        _row("p", 1, 0.70, 5, False, status="pruned"),  # stopped early: anytime only
    ])
    res = analyse(rows, ref=(0.0, 40e9))
    assert {r["trial_id"] for r in res["final"]} == {"base", "a"}
    assert [r["trial_id"] for r in res["final_front"]] == ["a"]
    assert res["baseline"] == {"trial_id": "base", "schedule": "none:1x3", "val_metric": 0.6, "train_flops": 20e9}
    # trial a first reached the baseline's best (0.6) at 8 GFLOPs; the baseline needed 20
    assert res["final_front"][0]["flops_saving_vs_baseline"] == pytest.approx(1 - 8 / 20)
    assert [r["trial_id"] for r in res["anytime_front"]] == ["p"]
    assert res["counts"] == {"finished": 2, "pruned": 1, "error": 0}
