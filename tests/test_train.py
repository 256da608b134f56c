import pytest
import torch

from c2f_search import Run, TrainConfig, load_checkpoint, save_checkpoint

KW = {"depth": 1}


def _cfg(schedule, **kw):
    return TrainConfig(
        schedule, model_kwargs=KW, batch_size=8, lr=3e-4, warmup_steps=2, freqm=8, timem=32, mixup=0.5, **kw
    )


def _metrics(run):
    return [
        (r["step"], r["C"], round(r["train_loss"], 6), round(r["val_metric"], 6), r["train_flops"])
        for r in run.records()
    ]


@pytest.mark.parametrize("schedule", ["fshift:2x1,1x1", "maxpool:4x0.5,2x0.5,1x1", "patch-pi:2x1,1x0.5"])
def test_same_seed_same_metrics_and_phases_run_in_order(tiny_data, schedule):
    a, b = _metrics(Run(_cfg(schedule), tiny_data, "cpu")), _metrics(Run(_cfg(schedule), tiny_data, "cpu"))
    assert a == b
    Cs = [m[1] for m in a]
    assert Cs == sorted(Cs, reverse=True) and Cs[-1] == 1
    flops = [m[4] for m in a]
    assert flops == sorted(flops) and flops[0] > 0


def test_resume_from_any_record_matches_an_uninterrupted_run(tiny_data, tmp_path):
    sched = "avgpool:2x1,1x1"
    full = _metrics(Run(_cfg(sched), tiny_data, "cpu"))
    run = Run(_cfg(sched), tiny_data, "cpu")
    first = []
    for rec in run.records():
        first.append(rec)
        if rec["phase_end"]:  # stop right at the transition, the hardest place to resume
            break
    save_checkpoint(run.state_dict(), tmp_path / "s.pt")
    resumed = Run(_cfg(sched), tiny_data, "cpu", state=load_checkpoint(tmp_path / "s.pt"))
    rest = _metrics(resumed)
    head = [(r["step"], r["C"], round(r["train_loss"], 6), round(r["val_metric"], 6), r["train_flops"]) for r in first]
    assert head + rest == full
    assert len(resumed.history) == len(full)


def test_budget_mode_stops_at_first_final_phase_epoch_reaching_target(tiny_data):
    # a coarse-phase evaluation never counts (the paper's budget mode): the first C=1 one does
    run = Run(_cfg("fshift:2x1,1x2", metric_target=0.0), tiny_data, "cpu")
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

    run = Run(_cfg("fshift:2x1,1x1"), tiny_data, "cpu", callbacks=[Steps()])
    run.fit()
    first, second = [s for s in Steps.seen if s[0] == 2], [s for s in Steps.seen if s[0] == 1]
    assert [s[1:3] for s in first] == [(k, k) for k in range(1, 6)]
    assert [s[1:3] for s in second] == [(k, k) for k in range(1, 6)]  # both start again at step 1
    assert first[-1][3] != second[0][3]  # a new optimizer


def test_nan_loss_is_a_clear_error(tiny_data):
    from c2f_search.errors import NonFiniteLoss

    run = Run(_cfg("none:1x1"), tiny_data, "cpu")
    with torch.no_grad():
        run.model.head[1].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="lower --lr"):
        list(run.records())
