"""The phase loop's rooms: the evaluator scores the split it is asked for (pretraining included), a
saved state is scored without a Run, and the FLOPs ledger is the one count that training, ASHA's
max_t and the benchmarks share."""

import pytest

from c2f_search import Run, TrainConfig
from c2f_search.data import builtin_events as builtin
from c2f_search.data.sets import Data
from c2f_search.search.runner import max_flops
from c2f_search.search.space import load_space
from c2f_search.train.evaluator import evaluate_state
from c2f_search.train.ledger import FlopsLedger

from .conftest import TINY_DATA

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
