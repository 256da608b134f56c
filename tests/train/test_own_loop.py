"""Coarse-to-fine in a user's own loop (docs/own_loop.md): the oracle (`c2f-search train`, examples/own_loop.py
and the Lightning callback train the same losses and weights), `c2f-search export`, and the one-line refusals."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from c2f_search import CoarseToFine, Geometry, build_for_phase, create_model, load_checkpoint, read_schedule_file
from c2f_search.cli import main
from c2f_search.errors import LoopMismatch, ScheduleError, ScheduleFileError, UnmovableModel
from c2f_search.lightning_callback import CoarseToFineCallback

from ..cli.helpers import cli
from ..conftest import TINY_DATA
from ..test_legacy_folders import _search as legacy_search

ROOT = Path(__file__).resolve().parents[2]
FULL = Geometry(64, 256)  # builtin:events' front end
# pooling; a patch kernel that moves (16x32 -> 16x16 by PI-resize); token dropping
ORACLE = ("avgpool:2x1,1x1", "patch-pi:2x1,1x1", "tpatchout:2x1,1x1")


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train_cli(schedule: str, out: Path) -> tuple[list[float], dict]:
    """`c2f-search train`, evaluated every step so that each record holds one step's loss."""
    args = ["train", "--data", TINY_DATA, "--schedule", schedule, "--depth", "1", "--batch-size", "8", "--lr", "3e-4"]
    assert main([*args, "--warmup-steps", "2", "--eval-every", "1", "--out", str(out), "--no-progress"]) == 0
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    state = load_checkpoint(out / "checkpoints" / "final.pt")
    return [r["train_loss"] for r in rows if not r["averaged"]], state


def _largest(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.slow  # about 12-25 s a schedule on 2 CPU cores
@pytest.mark.parametrize("schedule", ORACLE)
def test_oracle_train_own_loop_and_lightning_train_alike(schedule, tmp_path, capsys):
    """The same schedule, seed and batches, augmentation off, trained three ways: the same loss at every step
    and the same final weights (within fp32 tolerance; on this CPU they agree to the bit)."""
    run_losses, state = _train_cli(schedule, tmp_path / "run")
    own = _example("own_loop")
    own_losses, own_model = own.train(own.p.parse_args(["--schedule", schedule]))
    lit = _example("lightning_module")
    module = lit.train(lit.p.parse_args(["--schedule", schedule]))
    assert len(run_losses) == len(own_losses) == len(module.losses) == 10
    callback = next(cb for cb in module.trainer.callbacks if isinstance(cb, CoarseToFineCallback))
    assert callback.train_flops == state["counters"]["train_flops"]  # the FLOPs the callback logs are Run's
    for losses, model in ((own_losses, own_model), (module.losses, module.model)):
        assert _largest(run_losses, losses) <= 1e-5, (schedule, run_losses, losses)
        assert model.geometry == FULL and state["geometry"] == FULL.as_dict()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, state["model"][k], rtol=1e-5, atol=1e-6, msg=f"{schedule}: {k}")
    print(
        f"{schedule}: largest loss difference own loop {_largest(run_losses, own_losses):.3g}, "
        f"Lightning {_largest(run_losses, module.losses):.3g}"
    )


def test_a_transition_moves_the_patch_kernel_and_calls_the_factory():
    model = build_for_phase("ast-tiny", {"num_classes": 3, "depth": 1}, "patch-pi", 2, FULL)
    built = []
    c2f = CoarseToFine("patch-pi:2x1,1x1", model, 2, full=FULL, optimizer_factory=lambda m: built.append(m) or "opt")
    steps = [c2f.step() for _ in range(4)]
    assert [s.transition for s in steps] == [False, False, True, False] and c2f.done
    assert steps[0].model.vit.patch_embed.proj.weight.shape[-1] == 32
    assert steps[2].model.vit.patch_embed.proj.weight.shape[-1] == 16 and c2f.model is steps[2].model
    assert built == [steps[0].model, steps[2].model] and c2f.optimizer == "opt"
    with pytest.raises(Exception, match="has 4 steps at 2 steps per epoch; step 5 was asked for"):
        c2f.step()


def test_a_full_resolution_model_starts_at_the_first_phase_and_token_dropping_keeps_it():
    model = create_model("ast-tiny", geometry=FULL, num_classes=3, depth=1)
    c2f = CoarseToFine("avgpool:2x1,1x1", model, 1, full=FULL)
    s = c2f.step()
    assert s.model.geometry == Geometry(64, 128) and s.transform(torch.zeros(2, 64, 256)).shape == (2, 64, 128)
    keep = CoarseToFine("tpatchout:2x1,1x1", model, 1, full=FULL).step().keep_index(2, "cpu")
    assert keep.shape == (2, 4 * 8)  # 4 x 16 tokens, half the time columns


@pytest.mark.parametrize(
    "name, kwargs, schedule",
    [
        ("ast-tiny", {"depth": 1}, "patch-bl:2x1,1x1"),
        ("htsat-tiny", {"depth": 1}, "patch-pi:2x1,1x1"),
        ("cnn14-tiny", {}, "maxpool:2x1,1x1"),
        ("ssast-tiny", {"depth": 1}, "fpatchout:2x1,1x1"),
    ],
)
def test_every_family_trains_through_a_transition(name, kwargs, schedule):
    """A step before and after the transition, with the family's own weight move (as Run's)."""
    method, C = schedule.split(":")[0], 2
    model = build_for_phase(name, {"num_classes": 3, **kwargs}, method, C, FULL)
    c2f = CoarseToFine(schedule, model, 1, full=FULL, optimizer_factory=lambda m: torch.optim.SGD(m.parameters()))
    for _ in range(2):
        s = c2f.step()
        x = s.transform(torch.randn(2, 64, 256))
        keep = s.keep_index(2, "cpu")
        loss = (s.model(x) if keep is None else s.model(x, keep=keep)).square().mean()
        c2f.optimizer.zero_grad()
        loss.backward()
        c2f.optimizer.step()
    assert s.transition and s.model.geometry == FULL and torch.isfinite(loss)


def test_a_timm_vit_with_dynamic_img_size_trains_a_pooling_schedule():
    import timm

    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=(64, 256), in_chans=1, num_classes=3, dynamic_img_size=True
    )
    c2f = CoarseToFine("avgpool:2x1,1x1", vit, 1, optimizer_factory=lambda m: torch.optim.Adam(m.parameters()))
    for _ in range(2):
        s = c2f.step()
        x = s.transform(torch.randn(2, 64, 256)).unsqueeze(1)
        loss = s.model(x).logsumexp(1).mean()
        c2f.optimizer.zero_grad()
        loss.backward()
        c2f.optimizer.step()
    assert x.shape[-1] == 256 and s.C == 1 and c2f.step_flops(2) > 0


def test_phase_fbank_gives_the_features_a_run_reads(tiny_data):
    from c2f_search import phase_fbank
    from c2f_search.data.frontend import load_audio

    model = build_for_phase("ast-tiny", {"num_classes": 3, "depth": 1}, "fshift", 2, FULL)
    step = CoarseToFine("fshift:2x1,1x1", model, 1, full=FULL).step()
    assert (step.frame_shift_ms, step.feature_length) == (20.0, 128)
    feats = tiny_data.features("train", 20.0, 128)
    clip = tiny_data.train.paths[int(feats.kept[0])]
    mine = phase_fbank(step, num_mel_bins=64)(load_audio(clip, 16000))
    torch.testing.assert_close(mine, feats.batch([0])[0][0].float())


# ------------------------------------------------------------------------------------------ export
def test_export_writes_a_file_own_loop_trains_and_names_what_it_chose(tmp_path, capsys):
    search = legacy_search(tmp_path)
    out = tmp_path / "best.json"
    assert main(["export", str(search), "--best", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CoarseToFine(" in printed and "exported trial 40f033ac: none:1x1" in printed
    f = read_schedule_file(out)
    assert str(f.schedule) == "none:1x1" and f.steps_per_epoch == 5 and f.full == FULL
    assert f.hyperparameters == {"batch_size": 8, "warmup_steps": 2, "lr": 1e-4, "seed": 0}
    assert f.source["metric"] == 0.25 and f.source["flops_saving"] == 0.0 and f.source["trial_id"] == "40f033ac"
    fshift = tmp_path / "fshift.yaml"
    assert main(["export", str(search), "--trial", "8717e159", "--out", str(fshift)]) == 0
    content = read_schedule_file(fshift)
    assert str(content.schedule) == "fshift:2x0.472,1x0.528" and content.model == "htsat-tiny"
    phases = json.loads(json.dumps(__import__("yaml").safe_load(fshift.read_text())["phases"]))
    assert [(p["steps"], p["frame_shift_ms"], p["feature_length"]) for p in phases] == [(2, 20.0, 128), (3, 10.0, 256)]
    own = _example("own_loop")
    losses, model = own.train(own.p.parse_args(["--schedule", str(fshift)]))
    assert len(losses) == 5 and model.model_name == "htsat-tiny"


def test_export_writes_a_learned_schedule_in_the_fixed_form_it_trained(tmp_path, capsys):
    search = legacy_search(tmp_path)
    result = next((search / "search").glob("train_schedule_8717e159_*")) / "result.json"
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    for r in rows:  # as a plateau controller would have reported it
        r.update(controller="plateau", schedule="fshift:2xauto,1x0.528 [plateau:patience=1]")
    result.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "learned.json"
    assert main(["export", str(search), "--trial", "8717e159", "--out", str(out)]) == 0
    f = read_schedule_file(out)
    assert str(f.schedule) == "fshift:2x0.4,1x0.6" and f.schedule.phase_steps(f.steps_per_epoch) == [2, 3]
    assert f.source["searched_schedule"] == "fshift:2xauto,1x0.528 [plateau:patience=1]"


@pytest.mark.parametrize(
    "args, line",
    [
        (["--trial", "nope"], "--trial nope: no such trial in"),
        (["--saving-at-least", "10%"], "--saving-at-least 0.1: no finished trial saved that much"),
        (["--best", "--out", "x.txt"], "use a file name ending in .json, .yaml, .yml"),
    ],
)
def test_export_refuses_in_one_line(args, line, tmp_path, capsys):
    search = legacy_search(tmp_path)
    rc, err = cli(["export", str(search), *args], capsys)
    assert rc == 2 and len(err) == 1 and line in err[0], err


# ------------------------------------------------------------------------------------ bad input
def _exported(tmp_path, suffix=".json") -> Path:
    from c2f_search.schedule_file import ScheduleFile, dump_schedule_file

    f = ScheduleFile(__import__("c2f_search").parse_schedule("avgpool:2x1,1x1"), 5, FULL, "ast-tiny", {"depth": 1})
    path = tmp_path / f"s{suffix}"
    path.write_text(dump_schedule_file(f, path))
    return path


def _edit(path: Path, **changes) -> Path:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))
    return path


AST = lambda: create_model("ast-tiny", geometry=FULL, num_classes=3, depth=1)  # noqa: E731


@pytest.mark.parametrize(
    "make, error, line",
    [
        (lambda p: (_edit(_exported(p), version=2), AST(), 5), ScheduleFileError, "written by a newer c2f-search"),
        (lambda p: (_edit(_exported(p), schedule="avgpool:4x1,1x1"), AST(), 5), ScheduleFileError, "edited by hand"),
        (lambda p: (_exported(p, ".yaml"), AST(), 4), LoopMismatch, "steps_per_epoch=4 disagrees with the schedule"),
        (lambda p: ("avgpool:2x1,1x1", torch.nn.Linear(3, 3), 5), UnmovableModel, "cannot move a Linear"),
        (
            lambda p: ("avgpool:2x1,1x1", __import__("timm").create_model("vit_tiny_patch16_224", in_chans=1), 5),
            UnmovableModel,
            "built without dynamic_img_size=True",
        ),
        (
            lambda p: (
                "patch-pi:2x1,1x1",
                __import__("timm").create_model("vit_tiny_patch16_224", dynamic_img_size=True),
                5,
            ),
            UnmovableModel,
            "cannot train 'patch-pi': it needs a patch kernel stretched along time",
        ),
        (
            lambda p: (_exported(p), create_model("htsat-tiny", geometry=FULL, num_classes=3, depth=1), 5),
            UnmovableModel,
            "searched with ast-tiny (ast), the model is htsat-tiny (htsat)",
        ),
        (lambda p: ("avgpool:2xauto,1x1", AST(), 5), ScheduleError, "export the schedule a learned trial trained"),
        (
            lambda p: ("tpatchout:2x1,1x1", create_model("cnn14", geometry=FULL, num_classes=3), 5),
            ScheduleError,
            "cnn14",
        ),
    ],
)
def test_the_api_refuses_in_one_line(make, error, line, tmp_path):
    schedule, model, steps = make(tmp_path)
    with pytest.raises(error) as e:
        CoarseToFine(schedule, model, steps)
    assert line in str(e.value) and "\n" not in str(e.value)


def test_lightning_refuses_a_module_without_the_named_attribute():
    import lightning as L

    class NoModel(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)

        def training_step(self, batch, batch_idx):
            return self.net(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, callbacks=[CoarseToFineCallback("avgpool:2x1,1x1")]
    )
    loader = torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=2)
    with pytest.raises(LoopMismatch, match="NoModel has no model in the attribute 'model': pass"):
        trainer.fit(NoModel(), loader)


def test_lightning_logs_c_phase_and_flops(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    lit = _example("lightning_module")
    logger = CSVLogger(tmp_path)
    lit.train(lit.p.parse_args(["--schedule", "avgpool:2x1,1x1"]), logger=logger, log_every_n_steps=1)
    lines = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    head, rows = lines[0].split(","), [dict(zip(lines[0].split(","), r.split(","))) for r in lines[1:]]
    assert {"c2f/C", "c2f/phase", "c2f/train_flops"} <= set(head) and len(rows) == 10
    assert [float(r["c2f/C"]) for r in rows] == [2.0] * 5 + [1.0] * 5
    flops = [float(r["c2f/train_flops"]) for r in rows]
    assert flops == sorted(flops) and flops[5] - flops[4] > flops[1] - flops[0]  # C = 1 costs more per step


def test_lightning_moves_a_full_resolution_model_to_the_first_phase_and_its_optimizer_follows(tiny_data):
    import lightning as L

    lit = _example("lightning_module")
    model = create_model("ast-tiny", geometry=FULL, num_classes=tiny_data.num_classes, depth=1)
    module = lit.Tagger(model, tiny_data.mean, tiny_data.std, tiny_data.multilabel, 3e-4, 2)
    seen = []

    class Watch(L.Callback):  # after the c2f callback: the optimizer holds the parameters the step trains
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            held = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            seen.append((pl_module.model.geometry, held == {id(p) for p in pl_module.model.parameters()}))

    clips = lit.Clips(tiny_data)
    loader = torch.utils.data.DataLoader(clips, batch_size=8, shuffle=False, drop_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[CoarseToFineCallback("avgpool:2x1,1x1", full=FULL), Watch()],
    )
    trainer.fit(module, loader)
    assert seen == [(Geometry(64, 128), True)] * 5 + [(FULL, True)] * 5 and trainer.current_epoch == 2


@pytest.mark.slow
@pytest.mark.parametrize("example", ["own_loop.py", "lightning_module.py"])
def test_the_examples_run_as_scripts(example, tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--schedule", "tpatchout:2x1,1x1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0 and "trained 10 steps" in p.stdout, p.stderr[-2000:]


@pytest.mark.slow
def test_a_searched_schedule_exported_trains_in_own_loop_as_its_trial_did(tmp_path):
    """`c2f-search export DIR --best --out best.json`, then `examples/own_loop.py --schedule best.json`: the loop
    repeats the trial (its per-epoch mean training losses)."""
    from ..cli.helpers import ENV
    from ..conftest import grid_space, run_cli

    space, out, best = grid_space(tmp_path, ["none:1x2", "tpatchout:2x1,1x1"]), tmp_path / "s", tmp_path / "best.json"
    r = run_cli(
        ["search", "--space", str(space), "--data", TINY_DATA, "--depth", "1", "--out", str(out)],
        tmp_path / "search.log",
        ENV,
        600,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    r = run_cli(["export", str(out), "--best", "--out", str(best)], tmp_path / "export.log", ENV, 120)
    assert r.returncode == 0 and "CoarseToFine(" in r.stdout, r.stdout[-3000:]
    f = read_schedule_file(best)
    trial = [x for x in pq.read_table(out / "trials.parquet").to_pylist() if x["trial_id"] == f.source["trial_id"]]
    own = _example("own_loop")
    losses, _ = own.train(own.p.parse_args(["--schedule", str(best)]))
    per_epoch = [sum(losses[k : k + 5]) / 5 for k in range(0, len(losses), 5)]
    assert [x["train_loss"] for x in trial] == pytest.approx(per_epoch, rel=1e-5, abs=1e-6)
