"""Forking: a run continues another's state exactly as if it had trained that prefix itself, where
``fork_point`` says it may (equal phases, the state at an evaluation point of both, a cosine LR planned at the
same length)."""

from __future__ import annotations

import pytest

from c2f_search import Run, fork_point, parse_schedule
from c2f_search.errors import CheckpointError

from ..conftest import last_state, tiny_config

# --------------------------------------------------------------------------------------- forking


def _metrics(records):
    return [
        (
            r["step"],
            r["C"],
            r["phase"],
            r["train_loss"],
            r["val_metric"],
            r["train_flops"],
            r["eval_flops"],
            r["phase_end"],
            r["schedule_done"],
            r["schedule"],
        )
        for r in records
    ]


@pytest.mark.slow
def test_forked_runs_match_runs_from_scratch(tiny_data):
    """Three schedules share a prefix; each forked run's records equal its run from scratch."""
    a, b, c = "fshift:2x1,1x1", "fshift:2x1,1x2", "fshift:2x1.4,1x1.6"  # 5 steps per epoch
    scratch = {s: _metrics(Run(tiny_config(s), tiny_data, "cpu").records()) for s in (a, b, c)}
    end_a = last_state(Run(tiny_config(a), tiny_data, "cpu"))  # a's final state, step 10
    fork_b = Run(tiny_config(b), tiny_data, "cpu", state=end_a)  # b goes on at C=1 from step 10
    rest_b = list(fork_b.records())
    assert _metrics(fork_b.history) == scratch[b] and rest_b and rest_b[0]["step"] == 15
    # c's first phase is longer (7 steps): it can take a's state at step 5, an epoch end of both
    assert fork_point(parse_schedule(a), parse_schedule(c), 5) == 5
    at5 = last_state(Run(tiny_config(a), tiny_data, "cpu"), at_step=5)
    fork_c = Run(tiny_config(c), tiny_data, "cpu", state=at5)
    list(fork_c.records())
    assert _metrics(fork_c.history) == scratch[c]
    assert fork_c.history[0]["phase_end"] is False  # a's phase ended at step 5, c's does not: relabelled
    with pytest.raises(CheckpointError, match="trained 5 steps|planned"):
        Run(tiny_config(c), tiny_data, "cpu", state=end_a)  # a's phase 1 is not c's
    with pytest.raises(CheckpointError, match="lr"):
        Run(tiny_config(b, lr=1e-3), tiny_data, "cpu", state=end_a)  # other hyperparameters: another trajectory


def test_fork_point_rules():
    s = parse_schedule
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x2,1x8"), 10) == 60  # all of the parent
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x3,1x3"), 10) == 20  # into the longer first phase
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x3,1x3"), 10, lr_needs_length=True) == 0
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x2,1x8"), 10, lr_needs_length=True) == 20
    assert fork_point(s("fshift:4x2,1x4"), s("avgpool:4x2,1x4"), 10) == 0  # another method
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:2x2,1x4"), 10) == 0  # another C
    assert fork_point(s("fshift:4x1.5,1x4"), s("fshift:4x2,1x4"), 10) == 10  # last common epoch end
    assert fork_point(s("none:1x3"), s("none:1x5"), 7) == 21


def test_cosine_lr_forks_only_where_the_phase_length_agrees(tiny_data):
    a, b = "fshift:2x1,1x1", "fshift:2x1,1x2"
    at5 = last_state(Run(tiny_config(a, lr_schedule="cosine"), tiny_data, "cpu"), at_step=5)
    end_a = last_state(Run(tiny_config(a, lr_schedule="cosine"), tiny_data, "cpu"))
    scratch = _metrics(Run(tiny_config(b, lr_schedule="cosine"), tiny_data, "cpu").records())
    fork = Run(tiny_config(b, lr_schedule="cosine"), tiny_data, "cpu", state=at5)
    list(fork.records())
    assert _metrics(fork.history) == scratch
    with pytest.raises(CheckpointError, match="cosine"):
        Run(tiny_config(b, lr_schedule="cosine"), tiny_data, "cpu", state=end_a)
