"""``Run``, the phase loop: same seed, same records; phases in order; a NaN stops the run naming the step;
a checkpoint resumes exactly; the coarse-only ablation; and the loop's rooms: the evaluator scores the split
it is asked for (pretraining included), a saved state is scored without a Run, and the FLOPs ledger is the
one count that training, ASHA's max_t and the benchmarks share."""

import pytest
import torch

from c2f_search import FixedSchedule, Geometry, Run, TrainConfig, load_checkpoint, save_checkpoint
from c2f_search.data import builtin_events as builtin
from c2f_search.data.sets import Data
from c2f_search.search.runner import max_flops
from c2f_search.search.space import load_space
from c2f_search.train.evaluator import evaluate_state
from c2f_search.train.ledger import FlopsLedger

from ..conftest import TINY_DATA, tiny_config


def _metrics(run):
    return [
        (r["step"], r["C"], round(r["train_loss"], 6), round(r["val_metric"], 6), r["train_flops"])
        for r in run.records()
    ]


@pytest.mark.parametrize("schedule", ["fshift:2x1,1x1", "maxpool:4x0.5,2x0.5,1x1", "patch-pi:2x1,1x0.5"])
def test_same_seed_same_metrics_and_phases_run_in_order(tiny_data, schedule):
    a, b = (
        _metrics(Run(tiny_config(schedule), tiny_data, "cpu")),
        _metrics(Run(tiny_config(schedule), tiny_data, "cpu")),
    )
    assert a == b
    Cs = [m[1] for m in a]
    assert Cs == sorted(Cs, reverse=True) and Cs[-1] == 1
    flops = [m[4] for m in a]
    assert flops == sorted(flops) and flops[0] > 0


def test_resume_from_any_record_matches_an_uninterrupted_run(tiny_data, tmp_path):
    sched = "avgpool:2x1,1x1"
    full = _metrics(Run(tiny_config(sched), tiny_data, "cpu"))
    run = Run(tiny_config(sched), tiny_data, "cpu")
    first = []
    for rec in run.records():
        first.append(rec)
        if rec["phase_end"]:  # stop right at the transition, the hardest place to resume
            break
    save_checkpoint(run.state_dict(), tmp_path / "s.pt")
    resumed = Run(tiny_config(sched), tiny_data, "cpu", state=load_checkpoint(tmp_path / "s.pt"))
    rest = _metrics(resumed)
    head = [(r["step"], r["C"], round(r["train_loss"], 6), round(r["val_metric"], 6), r["train_flops"]) for r in first]
    assert head + rest == full
    assert len(resumed.history) == len(full)


def test_budget_mode_stops_at_first_final_phase_epoch_reaching_target(tiny_data):
    # a coarse-phase evaluation never counts (the paper's budget mode): the first C=1 one does
    run = Run(tiny_config("fshift:2x1,1x2", metric_target=0.0), tiny_data, "cpu")
    recs = list(run.records())
    assert [r["C"] for r in recs] == [2, 1] and not recs[0]["target_reached"]
    assert recs[1]["target_reached"] and recs[1]["schedule_done"] and recs[1]["epoch"] == 2.0


def test_phase_transition_resets_optimizer_state(tiny_data):
    from c2f_search.train.callbacks.base import Callback

    class Steps(Callback):  # Adam's step count and the LR schedule's position after every step
        seen = []

        def on_step_end(self, run):
            p = next(run.model.parameters())
            self.seen.append((run.C, int(run.opt.state[p]["step"]), run.lr_sched.last_epoch, id(run.opt)))

    run = Run(tiny_config("fshift:2x1,1x1"), tiny_data, "cpu", callbacks=[Steps()])
    run.fit()
    first, second = [s for s in Steps.seen if s[0] == 2], [s for s in Steps.seen if s[0] == 1]
    assert [s[1:3] for s in first] == [(k, k) for k in range(1, 6)]
    assert [s[1:3] for s in second] == [(k, k) for k in range(1, 6)]  # both start again at step 1
    assert first[-1][3] != second[0][3]  # a new optimizer


def test_nan_loss_is_a_clear_error(tiny_data):
    from c2f_search.errors import NonFiniteLoss

    run = Run(tiny_config("none:1x1"), tiny_data, "cpu")
    with torch.no_grad():
        run.model.head[1].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="lower --lr"):
        list(run.records())


TEST = "builtin:events?train=10&val=16&seed=7"


@pytest.fixture(scope="module")
def with_test(_cache):
    return Data.from_specs(TINY_DATA, test=str(builtin.materialize(TEST) / "val.json"))


def test_pretraining_scores_the_split_it_is_asked_for(with_test):
    cfg = TrainConfig(
        "fshift:2x1,1x1",
        model="ssast-tiny",
        model_kwargs={"depth": 1},
        objective="masked-patch",
        mask_patches=20,
        batch_size=8,
        warmup_steps=0,
    )
    run = Run(cfg, with_test, "cpu")
    run.fit()
    eval_flops = run.counters["eval_flops"]
    val, test = run.evaluate("val"), run.evaluate("test")
    assert val == run.history[-1]["val_metric"] and test != val  # 20 val clips, 16 other test clips
    assert run.counters["eval_flops"] > eval_flops  # a validation evaluation counts; ...
    before = run.counters["eval_flops"]
    run.evaluate("test")
    assert run.counters["eval_flops"] == before  # ... a test evaluation is reporting
    assert evaluate_state(run.state_dict(), with_test, "test") == pytest.approx(test, rel=1e-6)


def test_a_state_is_scored_reading_only_the_split_it_scores(with_test):
    cfg = TrainConfig("avgpool:2x1,1x1", model_kwargs={"depth": 1}, batch_size=8, weight_averaging="top:1")
    run = Run(cfg, with_test, "cpu")
    run.fit()
    assert run.history[-1]["averaged"]  # a final state after weight averaging is scored too
    fresh = Data.from_specs(TINY_DATA, test=str(builtin.materialize(TEST) / "val.json"))
    score = evaluate_state(run.state_dict(), fresh, "test")
    assert score == pytest.approx(run.evaluate("test"), rel=1e-6)
    assert [k[0] for k in fresh._feats] == ["test"]  # no training or validation features were read


@pytest.mark.parametrize(
    "space_yaml, model",
    [
        (
            "epochs: 2\nfixed: {batch_size: 12}\nspace:\n  method: [avgpool]\n  C_values: [2]\n"
            "  coarse_phases: {low: 0, high: 1}\n",
            "ast-tiny",
        ),
        (
            "epochs: 2\nmodel: ssast-tiny\nobjective: masked-patch\nfixed: {batch_size: 12, mask_patches: 30}\n"
            "space:\n  method: [fshift]\n  C_values: [2]\n  coarse_phases: {low: 0, high: 1}\n",
            "ssast-tiny",
        ),
    ],
)
def test_asha_max_t_is_what_the_baseline_trains(tiny_data, tmp_path, space_yaml, model):
    """40 clips at batch 12: 3 steps per epoch, the last 4 clips dropped; a masked-patch space counts
    its own objective's FLOPs."""
    path = tmp_path / "s.yaml"
    path.write_text(space_yaml)
    space = load_space(str(path))
    kw = {"depth": 1}
    baseline = Run(
        TrainConfig("none:1x2", model=model, model_kwargs=kw, objective=space.objective, **space.fixed),
        tiny_data,
        "cpu",
    )
    assert baseline.steps_per_epoch == 3
    baseline.fit()
    assert max_flops(tiny_data, space, 2, kw) == baseline.counters["train_flops"]
    ledger = FlopsLedger.for_config(baseline.cfg, tiny_data)
    assert ledger.epoch_flops(1) * 2 == baseline.counters["train_flops"]


# ---------------------------------------------------------------------------------- Table 1 Pool2
def test_coarse_only_ablation_trains_and_evaluates_at_its_own_C(tiny_data):
    run = Run(tiny_config("avgpool:2x1,coarse-only", metric_target=0.0), tiny_data, "cpu")
    recs = list(run.records())
    assert [r["C"] for r in recs] == [2] and recs[0]["target_reached"]  # its final phase is C=2
    assert run.model.geometry == Geometry(64, 128)
    assert isinstance(run.controller, FixedSchedule) and run.controller.final_C() == 2
