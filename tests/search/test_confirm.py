"""confirm --target: a front confirmed on another setting (issue 20). The pieces by hand (scaling, the rank
correlation, the target's settings, the transfer sentence and cost line), then the whole command in real Ray
on tiny settings: a learned search with a baseline, a plain confirm, and a target that reuses its seeds."""

import json
import math
import os

import pyarrow.parquet as pq
import pytest

from c2f_search.analysis.transfer import cost_numbers, cost_text, rank_agreement, rank_correlation, transfer_sentence
from c2f_search.controllers import scale_transition
from c2f_search.schedule import parse_schedule

from ..conftest import TINY_DATA


def test_scaled_schedule_keeps_its_shape():
    s = parse_schedule("fshift:4x1.5,2x0.5,1x3")
    big = s.scaled(2)
    assert str(big) == "fshift:4x3,2x1,1x6" and big.total_epochs == 2 * s.total_epochs
    assert big.phase_steps(10) == [2 * n for n in s.phase_steps(10)] == [30, 10, 60]
    assert str(parse_schedule("avgpool:4xauto,2xauto,1x3").scaled(1.6)) == "avgpool:4xauto,2xauto,1x4.8"
    assert str(parse_schedule("avgpool:2x20,coarse-only").scaled(0.5)) == "avgpool:2x10,coarse-only"
    assert parse_schedule("fshift:2x0.001,1x1").scaled(0.1).phases[0].epochs == 0.0001  # never rounded to nothing
    # a mixed schedule keeps each phase's method
    assert str(parse_schedule("avgpool:4x1,tpatchout:2x1,1x2").scaled(2)) == "avgpool:4x2,tpatchout:2x2,1x4"


def test_a_controllers_budget_and_max_scale_and_its_counts_do_not():
    assert (
        scale_transition("plateau:patience=2,delta=0.002,budget=6", 1.6) == "plateau:patience=2,delta=0.002,budget=9.6"
    )
    assert (
        scale_transition("probe:steps=4,score=flops,max=1.5,budget=6", 2) == "probe:steps=4,score=flops,max=3,budget=12"
    )


def test_kendall_tau_on_orders_known_by_hand():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair out of 6: (5 - 1) / 6
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # a tie on one side (tau-b): 5 concordant, 0 discordant, 1 pair tied in x: 5 / sqrt((6 - 1) * 6)
    assert rank_correlation([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / math.sqrt(30))
    assert rank_correlation([0.3], [0.1]) is None and rank_correlation([], []) is None  # fewer than 2
    assert rank_correlation([1, 1, 1], [1, 2, 3]) is None  # every item tied on one side


def _row(schedule, proxy, target, form="fixed"):
    """A transfer row: (saving mean, reached, seeds, holds, best metric) per side."""
    s = parse_schedule(schedule)
    out = {
        "source_trial": schedule,
        "form": form,
        "metric_name": "accuracy",
        "proxy_schedule": schedule,
        "target_schedule": str(s.scaled(2)),
        "proxy_is_baseline": s.is_baseline,
        "target_is_baseline": s.is_baseline,
    }
    for side, (saving, reached, seeds, holds, metric, saved) in (("proxy", proxy), ("target", target)):
        out.update(
            {
                f"{side}_flops_saving_mean": saving,
                f"{side}_flops_saving_sd": 0.01,
                f"{side}_reached": reached,
                f"{side}_seeds": seeds,
                f"{side}_holds_every_seed": holds,
                f"{side}_best_final_metric_mean": metric,
                f"{side}_flops_saved_mean": saved,
            }
        )
    return out


def test_one_seed_shows_no_spread_rather_than_a_zero_one():
    from c2f_search.analysis.formatting import format_values, mean_sd

    assert mean_sd([0.3]) == (0.3, None) and mean_sd([0.2, 0.4])[1] == pytest.approx(math.sqrt(0.02))
    assert format_values([0.3], 100, 1, "%", "+") == "+30.0% ± n/a" and format_values([]) == "n/a"
    row = _row("fshift:2x1,1x3", (0.30, 2, 2, True, 0.70, 3e12), (0.10, 1, 1, True, 0.80, 2e12))
    row["target_flops_saving_sd"] = None  # one target seed
    text = transfer_sentence([row], rank_agreement([row]))
    assert "+10.0% ± n/a at the target" in text and "+30.0% ± 1.0" in text, text


def test_rank_agreement_orders_by_reach_then_saving_and_leaves_out_the_baseline():
    rows = [
        _row("none:1x4", (0.0, 3, 3, False, 0.7, 0.0), (0.0, 3, 3, False, 0.8, 0.0)),
        _row("fshift:2x1,1x3", (0.30, 3, 3, True, 0.70, 3e12), (0.10, 3, 3, True, 0.80, 2e12)),
        _row("fshift:4x1,1x3", (0.20, 3, 3, True, 0.69, 2e12), (None, 0, 3, False, 0.70, None)),
        _row("avgpool:2x2,1x2", (0.40, 1, 3, False, 0.65, 4e12), (0.05, 3, 3, True, 0.75, 1e12)),
    ]
    ranks = rank_agreement(rows)
    assert ranks["schedules"] == 3
    # by saving: proxy fshift2 > fshift4 > avgpool (reached 1/3 only); target fshift2 > avgpool > fshift4 (never)
    assert ranks["tau_saving"] == pytest.approx(1 / 3)
    # by metric: proxy 0.70 > 0.69 > 0.65; target 0.80 > 0.75 > 0.70
    assert ranks["tau_metric"] == pytest.approx(1 / 3)
    assert rank_agreement(rows[:2]) == {"schedules": 1, "tau_saving": None, "tau_metric": None}
    text = transfer_sentence(rows, ranks)
    assert "2 of 3 confirmed schedules kept a budget-mode saving at every seed" in text
    assert "saved +30.0% ± 1.0 on the proxy (3/3 seeds reached) and saved +10.0% ± 1.0 at the target" in text
    assert "too few" in text
    c = cost_numbers(rows, search_flops=9e12, search_trials=12, target_flops=30e12, proxy_flops=1e12)
    assert (c["chosen"], c["chosen_saved_flops"], c["break_even"], c["break_even_with_confirm"]) == (
        "fshift:2x2,1x6",
        2e12,
        5,
        20,
    )  # ceil(9 / 2), ceil(40 / 2)
    assert "pays for itself after 5 target trainings (20 counting this confirmation)" in cost_text(c)


def test_a_saving_that_does_not_hold_at_the_target_is_said_not_to_pay():
    rows = [
        _row("none:1x4", (0.0, 3, 3, False, 0.7, 0.0), (0.0, 3, 3, False, 0.8, 0.0)),
        _row("fshift:2x1,1x3", (0.30, 3, 3, True, 0.70, 3e12), (0.10, 2, 3, False, 0.80, 2e12)),
    ]
    text = transfer_sentence(rows, rank_agreement(rows))
    assert (
        "0 of 1 confirmed schedules" in text and "tau between the proxy's and the target's orders is undefined" in text
    )
    assert "do not carry over to this target" in text
    c = cost_numbers(rows, 9e12, 12, 30e12, 0.0)
    assert c["break_even"] is None and "does not pay for itself" in cost_text(c)
    assert "did not keep a budget-mode saving at every seed" in cost_text(c) and "another" not in cost_text(c)
    # a later pick that does hold is named, with its own break-even count
    held = _row("fshift:4x1,1x3", (0.20, 3, 3, True, 0.70, 2e12), (0.15, 3, 3, True, 0.80, 3e12))
    c = cost_numbers(rows + [held], 9e12, 12, 30e12, 0.0)
    assert c["break_even"] is None and c["best_holding"]["break_even"] == 3  # ceil(9 / 3)
    assert "another confirmed schedule, fshift:4x2,1x6" in cost_text(c) and "after 3 target trainings" in cost_text(c)


def _settings(tmp_path):
    from c2f_search.settings import DataSettings, SearchSettings

    data = DataSettings(TINY_DATA, None, None, "auto", False, [1.0, 2.0], None, None, None).resolved()
    return SearchSettings(
        space="demo", out=str(tmp_path), data=data, model_kwargs={"depth": 1}, epochs=4.0, test="/proxy/test.json"
    )


def test_the_targets_settings_come_from_the_search_but_for_what_it_changes(tmp_path):
    from c2f_search.search.confirm import Target, at_target, target_setting
    from c2f_search.search.space import load_space

    settings, space = _settings(tmp_path), load_space("demo")
    st, sp, factor, recipe = target_setting(settings, space, Target("t", model_kwargs={"depth": 3}, epochs=6.0))
    assert (st.model_kwargs, st.epochs, factor, recipe, st.test) == ({"depth": 3}, 6.0, 1.5, None, "/proxy/test.json")
    assert st.data == settings.data and sp.fixed == space.fixed and sp.models == space.models
    # another data set: its own splits and statistics, no test split unless given
    st, _, factor, _ = target_setting(
        settings, space, Target("t", data="builtin:events?train=48&val=20&seed=4", epochs_factor=2.0)
    )
    assert factor == 2.0 and st.data.norm is None and st.test is None and st.model_kwargs == {"depth": 1}
    assert st.data.train != settings.data.train and st.data.val.endswith("val.json")
    # another family: the search's depth is not one of its settings
    assert target_setting(settings, space, Target("t", model="cnn14-tiny"))[0].model_kwargs == {}
    # a recipe: its model and settings, training settings, front end and epochs
    st, sp, factor, recipe = target_setting(settings, space, Target("t", recipe="esc50"))
    assert sp.models == ["ast-base"] and st.model_kwargs == {"dist_token": True, "stride": 10} and factor == 25 / 4
    assert sp.fixed["batch_size"] == 48 and sp.fixed["lr"] == 1e-4 and sp.fixed["warmup_steps"] == 0
    assert (st.data.target_length, st.data.num_mel_bins, st.data.norm) == (512, 128, [-6.6268077, 5.358466])
    run = {"schedule": "fshift:2x1,1x3", "lr": 3e-4, "seed": 7, "source_trial": "a"}
    assert at_target(run, factor, "ast-base", recipe)[0] == {
        "schedule": "fshift:2x6.25,1x18.75",
        "seed": 7,
        "source_trial": "a",
        "model": "ast-base",
    }


def _cli(args, log, timeout=900):
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with open(log, "w") as f:
        r = subprocess.run(
            [sys.executable, "-m", "c2f_search.cli", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
        )
    return r.returncode, log.read_text()


LEARNED_SPACE = """epochs: 2
space:
  method: [avgpool]
  coarse_phases: {low: 0, high: 1}
  C_values: [2]
  final_fraction: {low: 0.5, high: 0.5}
  controller:
    plateau: {patience: [1]}
fixed: {batch_size: 8, eval_every: 0.5epoch, lr: 3.0e-4}
"""
TARGET_DATA = "builtin:events?train=48&val=20&seed=4"


@pytest.mark.slow
def test_confirm_target_reruns_the_front_at_the_target_both_forms_of_a_learned_schedule(tmp_path):
    import ray

    from c2f_search.analysis.rows import load_rows
    from c2f_search.analysis.seeds import analyse_seeds

    ray.shutdown()
    out = tmp_path / "s"
    (tmp_path / "learned.yaml").write_text(LEARNED_SPACE)
    rc, log = _cli(
        [
            "search",
            "--space",
            str(tmp_path / "learned.yaml"),
            "--data",
            TINY_DATA,
            "--depth",
            "1",
            "--trials",
            "3",
            "--sampler",
            "random",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
        tmp_path / "search.log",
    )
    assert rc == 0, log[-3000:]
    final = [t for t in load_rows(out).to_pylist() if t["schedule_done"]]
    assert {t["controller"] for t in final} == {"fixed", "plateau"}, "the sampler's seed gave no baseline or no learned"
    # a plain confirm first: the target reuses its proxy runs
    rc, log = _cli(["confirm", str(out), "--top", "1", "--seeds", "2"], tmp_path / "plain.log")
    assert rc == 0, log[-3000:]
    plain = pq.read_table(out / "confirm_seeds.parquet").to_pylist()
    assert len(plain) == 4 and "form" not in plain[0]  # the plain confirm as before: no forms
    rc, log = _cli(
        [
            "confirm",
            str(out),
            "--top",
            "1",
            "--seeds",
            "2",
            "--target",
            "big",
            "--depth",
            "2",
            "--data",
            TARGET_DATA,
            "--epochs-factor",
            "2",
            "--test",
            "builtin:events?train=10&val=20&seed=5",
        ],
        tmp_path / "target.log",
    )
    assert rc == 0, log[-3000:]
    folder = out / "confirm" / "big"
    assert "proxy side: 4 runs reused from the plain confirm" in log and ", 2 run here" in log
    learned = next(t for t in final if t["controller"] == "plateau")
    # the baseline and the K schedules at the target, a learned one in both forms, each at both seeds
    target = load_rows(folder, name="target").to_pylist()
    configs = {t["trial_id"]: json.loads(t["config"]) for t in target}
    got = sorted((c["form"], c["schedule"], c.get("transition") or "", c["seed"]) for c in configs.values())
    seeds = sorted({q["seed"] for q in plain})  # the plain confirm's seeds, the same on both sides
    exported = str(parse_schedule(learned["trained"]).scaled(2))
    controller = str(parse_schedule(learned["schedule"].split(" [")[0]).scaled(2))
    transition = scale_transition(json.loads(learned["config"])["transition"], 2)
    assert got == sorted(
        [("fixed", "none:1x4", "", s) for s in seeds]
        + [("controller", controller, transition, s) for s in seeds]
        + [("exported", exported, "", s) for s in seeds]
    ), got
    assert "budget=4" in transition and {t["model"] for t in target} == {"ast-tiny"}
    # phase lengths scale: each phase of the exported schedule trains twice the proxy's epochs (steps per
    # epoch: 48 // 8 at the target)
    ends = sorted(
        {(t["phase"], t["epoch"]) for t in target if configs[t["trial_id"]]["form"] == "exported" and t["phase_end"]}
    )
    assert [e for _, e in ends] == pytest.approx(
        [sum(p.epochs for p in parse_schedule(exported).phases[: k + 1]) for k in range(len(ends))], abs=1 / 6
    )
    # savings against the target's own baseline at the same seed
    per_seed = pq.read_table(folder / "confirm_seeds.parquet").to_pylist()
    for q in (q for q in per_seed if q["side"] == "target" and q["budget_reached"]):
        base = [
            t
            for t in target
            if configs[t["trial_id"]]["form"] == "fixed" and configs[t["trial_id"]]["seed"] == q["seed"]
        ]
        ref = max(base, key=lambda t: (t["val_metric"], -t["step"]))
        assert q["flops_saving"] == pytest.approx(1 - q["budget_flops"] / ref["train_flops"])
        assert q["flops_saved"] == pytest.approx(ref["train_flops"] - q["budget_flops"])
    assert analyse_seeds(load_rows(folder, name="target"))[0] == [
        {k: v for k, v in q.items() if k not in ("side", "test_metric")} for q in per_seed if q["side"] == "target"
    ]
    rows = pq.read_table(folder / "confirm.parquet").to_pylist()
    assert [(r["form"], r["target_seeds"], r["proxy_seeds"]) for r in rows] == [
        ("fixed", 2, 2),
        ("controller", 2, 2),
        ("exported", 2, 2),
    ]
    # --test: each target run's final model on the test split, 20 clips (a multiple of 1/20)
    tests = [q["test_metric"] for q in per_seed if q["side"] == "target"]
    assert len(tests) == 6 and all(0 <= x <= 1 and round(20 * x, 6).is_integer() for x in tests)
    assert all(r["target_test_metric_mean"] is not None for r in rows)
    text = (folder / "confirm.txt").read_text()
    trained = len({t["trial_id"] for t in load_rows(out).to_pylist()})  # a repeated sample is not trained again
    assert "rank correlation (Kendall's tau-b" in text and f"cost: the proxy search trained {trained} trials" in text
    assert (folder / "confirm.png").stat().st_size > 10_000
    # a plain --overwrite replaces the plain confirm and leaves the target's folder
    rc, log = _cli(["confirm", str(out), "--top", "1", "--seeds", "1", "--overwrite"], tmp_path / "plain2.log")
    assert rc == 0 and (folder / "confirm.parquet").is_file(), log[-3000:]
    assert len(pq.read_table(out / "confirm_seeds.parquet")) == 2
    rc, log = _cli(["report", str(out)], tmp_path / "report.log", 300)
    page = (out / "report.html").read_text()
    assert rc == 0 and "Transfer to target big" in page and "Seeds (confirm)" in page, log[-2000:]
