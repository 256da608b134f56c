"""Token-dropping phases (PaSST's patchout) and schedules whose phases mix methods, through ``Run``."""

import pytest
import torch

from c2f_search import Run
from c2f_search.controllers import fork_point
from c2f_search.errors import CheckpointError
from c2f_search.models.flops import train_flops
from c2f_search.schedule import parse_schedule
from c2f_search.train.callbacks.base import Callback

from ..conftest import last_state, tiny_config

MIXED = "avgpool:4x1,tpatchout:2x1,1x1"  # tiny_data: 5 steps per epoch at batch 8; a 4 x 16 token grid


def _metrics(records):
    return [
        (
            r["step"],
            r["C"],
            r["phase"],
            r["method"],
            r["train_loss"],
            r["val_metric"],
            r["train_flops"],
            r["eval_flops"],
            r["phase_end"],
            r["schedule_done"],
            r["schedule"],
            r["trained"],
        )
        for r in records
    ]


def _tokens_seen(run):
    """(training?, tokens) of every pass through the first encoder block."""
    seen = []
    run.model.vit.blocks[0].register_forward_hook(lambda m, args, out: seen.append((m.training, args[0].shape[1])))
    return seen


def test_training_sees_the_kept_tokens_and_evaluation_every_token(tiny_data):
    run = Run(tiny_config("tpatchout:2x1,1x1"), tiny_data, "cpu")
    seen = _tokens_seen(run)  # the model is the same object in both phases: the grid never changes
    recs = run.fit()
    train, evals = [n for t, n in seen if t], [n for t, n in seen if not t]
    assert train == [1 + 4 * 8] * 5 + [1 + 4 * 16] * 5  # cls + half of the 16 time columns, then every token
    assert evals and set(evals) == {1 + 4 * 16}
    assert [(r["C"], r["method"]) for r in recs] == [(2, "tpatchout"), (1, "tpatchout")]
    # a step's FLOPs are the kept tokens'; evaluation is the full model's in both phases
    assert recs[0]["train_flops"] == 5 * 8 * train_flops(run.model, 32)
    assert recs[1]["train_flops"] - recs[0]["train_flops"] == 5 * 8 * train_flops(run.model)
    assert recs[0]["eval_flops"] == recs[1]["eval_flops"] - recs[0]["eval_flops"]


def test_a_full_resolution_phase_starts_from_exactly_the_weights_patchout_left(tiny_data, monkeypatch):
    import c2f_search.models.phase as phase_mod
    import c2f_search.train.run as train_mod

    moved, starts = [], {}
    real_transfer, real_step = phase_mod.transfer_weights, train_mod.TrainStep

    def transfer(model, geometry, method):
        moved.append((model.geometry, geometry, method.name))
        return real_transfer(model, geometry, method)

    class FirstStepWeights(real_step):  # one per phase: its first call sees the weights the phase starts from
        def __call__(self, *a, **kw):
            if not hasattr(self, "seen"):
                self.seen = True
                starts[len(starts)] = {k: v.clone() for k, v in self.model.state_dict().items()}
            return super().__call__(*a, **kw)

    monkeypatch.setattr(phase_mod, "transfer_weights", transfer)  # Run moves weights through move_to_phase
    monkeypatch.setattr(train_mod, "TrainStep", FirstStepWeights)
    ends = []

    class PhaseEnds(Callback):
        def on_phase_end(self, run, record):
            ends.append({k: v.clone() for k, v in run.model.state_dict().items()})

    run = Run(tiny_config(MIXED), tiny_data, "cpu", callbacks=[PhaseEnds()])
    run.fit()
    # avgpool's shorter grid -> the full grid moves the weights once; tpatchout -> C=1 moves nothing
    assert [(o.frames, n.frames) for o, n, _ in moved] == [(64, 256)]
    assert set(starts) == {0, 1, 2}
    assert all(torch.equal(ends[1][k], starts[2][k]) for k in ends[1])
    assert ends[0]["vit.pos_embed"].shape[1] == 1 + 4 * 4 and starts[1]["vit.pos_embed"].shape[1] == 1 + 4 * 16


@pytest.mark.slow
def test_a_mixed_schedule_forks_and_resumes_exactly(tiny_data):
    a, b, c = MIXED, "avgpool:4x1,tpatchout:2x1,1x2", "avgpool:4x1,fpatchout:2x1,1x1"
    scratch = {s: _metrics(Run(tiny_config(s), tiny_data, "cpu").records()) for s in (a, b, c)}
    assert scratch[a][-1][3] == "avgpool+tpatchout" and scratch[a][-1][-1] == a
    end_a = last_state(Run(tiny_config(a), tiny_data, "cpu"))
    fork_b = Run(tiny_config(b), tiny_data, "cpu", state=end_a)
    fork_b.fit()
    assert _metrics(fork_b.history) == scratch[b]
    # c shares a's first phase only: it takes a's state at its end, not a's last one
    assert fork_point(parse_schedule(a), parse_schedule(c), 5) == 5
    fork_c = Run(tiny_config(c), tiny_data, "cpu", state=last_state(Run(tiny_config(a), tiny_data, "cpu"), at_step=5))
    fork_c.fit()
    assert _metrics(fork_c.history) == scratch[c]
    with pytest.raises(CheckpointError, match="its phase 2 trained C=2 by tpatchout, this run trains C=2 by fpatchout"):
        Run(tiny_config(c), tiny_data, "cpu", state=end_a)
    # resumed in the middle of the patchout phase (the kept tokens are drawn from the run's own stream)
    mid = last_state(Run(tiny_config(a, eval_every="2"), tiny_data, "cpu"), at_step=8)
    assert mid["phases"][-1] == {**mid["phases"][-1], "C": 2, "method": "tpatchout"}
    resumed = Run(tiny_config(a, eval_every="2"), tiny_data, "cpu", state=mid)
    resumed.fit()
    assert _metrics(resumed.history) == _metrics(Run(tiny_config(a, eval_every="2"), tiny_data, "cpu").records())


def test_fork_point_needs_the_same_method_per_phase():
    s = parse_schedule
    assert fork_point(s("avgpool:4x2,tpatchout:2x2,1x4"), s("avgpool:4x2,tpatchout:2x2,1x8"), 10) == 80
    assert fork_point(s("avgpool:4x2,tpatchout:2x2,1x4"), s("avgpool:4x2,fpatchout:2x2,1x4"), 10) == 20
    assert fork_point(s("avgpool:4x2,tpatchout:2x2,1x4"), s("maxpool:4x2,tpatchout:2x2,1x4"), 10) == 0
    assert fork_point(s("none:1x3"), s("avgpool:1x5"), 10) == 30  # C = 1 is the same for every method


@pytest.mark.parametrize("rule", ["plateau:patience=1,max=1", "probe:steps=2,max=1"])
def test_a_learned_schedule_switches_method_with_its_C(tiny_data, rule):
    run = Run(tiny_config("avgpool:4xauto,tpatchout:2xauto,1x1", transition=rule), tiny_data, "cpu")
    recs = run.fit()
    phases = [(p["C"], p["method"]) for p in run.phases if p["steps"]]  # probe may pass through a C
    assert phases[-1] == (1, "tpatchout") and set(phases) <= {(4, "avgpool"), (2, "tpatchout"), (1, "tpatchout")}
    assert recs[-1]["trained"].startswith("avgpool:4x") and {r["method"] for r in recs} == {"avgpool+tpatchout"}
    if (2, "tpatchout") in phases:
        assert ",tpatchout:2x" in recs[-1]["trained"]
    assert (
        run.progress.step_flops(2) == run.ledger.step_flops(2, "tpatchout") < run.ledger.step_flops(2, "avgpool") * 1.2
    )
