"""The GPU-speed paths, exercised on the CPU as far as it allows: mixed precision and its resume,
the compiled step, the delayed non-finite check, the prefetching loader, static batches, the
feature modes and the throughput fields of each record."""

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from c2f_search import Run, load_checkpoint, save_checkpoint
from c2f_search.data.prefetch import Prefetcher, host_batches
from c2f_search.errors import CheckpointError, ConfigError, DataError, NonFiniteLoss
from c2f_search.models.flops import train_flops
from c2f_search.schema import record_table
from c2f_search.train.precision import mfu, peak_flops, resolve_precision

from ..conftest import TINY_DATA, tiny_config


def _metrics(records):
    return [(r["step"], r["C"], r["train_loss"], r["val_metric"], r["train_flops"]) for r in records]


def _interrupted(cfg, data, tmp_path):
    """Records up to the first phase end, then the rest from a checkpoint written and read back."""
    run = Run(cfg, data, "cpu")
    head = []
    for rec in run.records():
        head.append(rec)
        if rec["phase_end"]:
            break
    save_checkpoint(run.state_dict(), tmp_path / "s.pt")
    state = load_checkpoint(tmp_path / "s.pt")
    resumed = Run(cfg, data, "cpu", state=state)
    return head + list(resumed.records()), state, resumed


def test_bf16_autocast_on_cpu_trains_and_resumes_exactly(tiny_data, tmp_path):
    sched = "avgpool:2x0.4,1x0.4"  # 2 steps per phase: CPU bf16 is slow
    cfg = tiny_config(sched, precision="bf16")
    full = list(Run(cfg, tiny_data, "cpu").records())
    assert {r["precision"] for r in full} == {"bf16"}
    fp32 = _metrics(Run(tiny_config(sched, precision="fp32"), tiny_data, "cpu").records())
    assert [m[2] for m in _metrics(full)] != [m[2] for m in fp32]  # autocast really ran in bf16
    both, state, _ = _interrupted(cfg, tiny_data, tmp_path)
    assert _metrics(both) == _metrics(full) and state["precision"] == "bf16"
    # the precision asked for (or auto's on this device) wins over the checkpoint's: here the CPU's fp32
    assert Run(tiny_config(sched), tiny_data, "cpu", state=state).precision == "fp32"
    assert Run(tiny_config(sched, precision="fp32"), tiny_data, "cpu", state=state).precision == "fp32"


@pytest.mark.slow
def test_a_fp32_checkpoint_continues_in_the_precision_asked_for_and_says_so(tmp_path):
    """A checkpoint made on a CPU (fp32) resumed where bf16 is asked for (on a GPU: auto) trains on in bf16."""
    from c2f_search.cli import main

    out = tmp_path / "r"
    common = ["--out", str(out), "--no-progress"]
    assert (
        main(
            [
                "train",
                "--data",
                TINY_DATA,
                "--schedule",
                "fshift:2x1,1x1",
                "--depth",
                "1",
                "--batch-size",
                "8",
                "--precision",
                "fp32",
                *common,
            ]
        )
        == 0
    )
    import shutil

    shutil.copy(out / "checkpoints" / "phase1-C2.pt", out / "checkpoints" / "last.pt")
    p = subprocess.run(
        [sys.executable, "-m", "c2f_search.cli", "train", "--resume", "--precision", "bf16", *common],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "the checkpoint trained in fp32; it continues in bf16 (--precision bf16)" in p.stderr
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [(r["C"], r["precision"]) for r in rows] == [(2, "fp32"), (1, "bf16")]


def test_fp16_grad_scaler_state_survives_a_resume(tiny_data, tmp_path):
    cfg = tiny_config("fshift:2x0.4,1x0.4", precision="fp16")
    full = _metrics(Run(cfg, tiny_data, "cpu").records())
    both, state, resumed = _interrupted(cfg, tiny_data, tmp_path)
    assert _metrics(both) == full
    # the scale moved off its start (an overflow backed it off), and the resumed run took it over
    assert state["scaler"]["scale"] != torch.amp.GradScaler("cpu").get_scale()
    assert Run(cfg, tiny_data, "cpu", state=state).scaler.state_dict() == state["scaler"]


def test_delayed_nonfinite_check_names_the_step_and_phase(tiny_data):
    from c2f_search.train.callbacks.base import Callback

    class Poison(Callback):  # after step 5: the loss of step 6 is NaN; phase 2's check covers steps 5, 6, 7
        def on_step_end(self, run):
            if run.step == 6:
                with torch.no_grad():
                    run.model.head[1].weight.fill_(float("nan"))

    run = Run(tiny_config("fshift:2x1,1x1", mixup=0.0), tiny_data, "cpu", callbacks=[Poison()])  # 5 steps per epoch
    run.check_every = 3
    with pytest.raises(
        NonFiniteLoss,
        match=r"loss is nan at step 6 \(phase 2, C=1; found at step 7 by the check "
        r"that runs every 3 steps\); lower --lr",
    ):
        list(run.records())


def test_prefetcher_returns_exactly_the_plain_batches_in_order(tiny_data):
    feats = tiny_data.features("train", 20.0, 128)
    targets = tiny_data.targets("train", feats)
    order = list(np.array_split(np.random.default_rng(0).permutation(len(feats.kept)), 7))  # uneven sizes
    plain = list(host_batches(feats, targets, order))
    fetched = list(Prefetcher(host_batches(feats, targets, order), torch.device("cpu"), depth=2))
    assert len(fetched) == len(plain) == 7
    for a, b in zip(plain, fetched):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(plain[0][0], plain[1][0][: len(plain[0][0])])


def test_prefetcher_raises_the_threads_error_and_stops_early(tiny_data):
    feats = tiny_data.features("train", 10.0, 256)

    class Broken:
        kept = feats.kept

        def batches(self, index_batches):
            for k, idx in enumerate(index_batches):
                if k == 2:
                    raise DataError("clip 2 is broken")
                yield feats.batch(idx)

    order = [np.arange(i, i + 4) for i in range(0, 24, 4)]
    got = []
    with pytest.raises(DataError, match="clip 2 is broken"):
        for b in Prefetcher(host_batches(Broken(), torch.zeros(40, 10), order), torch.device("cpu")):
            got.append(b)
    assert len(got) == 2
    p = Prefetcher(host_batches(feats, torch.zeros(40, 10), order * 50), torch.device("cpu"), depth=1)
    next(p)
    p.close()  # returns although the thread had hundreds of batches left
    assert not p.thread.is_alive()


def test_last_partial_batch_is_dropped_and_flops_count_trained_samples(tiny_data):
    run = Run(tiny_config("none:1x2", batch_size=16), tiny_data, "cpu")  # 40 clips: 2 full batches, 8 clips dropped
    assert run.steps_per_epoch == 2
    recs = list(run.records())
    assert [r["step"] for r in recs] == [2, 4]
    assert recs[0]["train_flops"] == 2 * 16 * train_flops(run.model)
    with pytest.raises(ConfigError, match="batch_size: 41 is more than the 40 training clips"):
        Run(tiny_config("none:1x1", batch_size=41), tiny_data, "cpu")


def test_records_carry_throughput_precision_and_mfu(tiny_data):
    run = Run(tiny_config("fshift:2x1,1x1"), tiny_data, "cpu")
    recs = list(run.records())
    assert run.precision == "fp32" and not run.compiled  # auto on the CPU
    for r in recs:
        assert r["samples_per_s"] > 0 and r["mfu"] is None and r["device"] == "cpu"
    assert recs[0]["phase_train_time_s"] == recs[0]["train_time_s"]
    assert recs[1]["phase_train_time_s"] < recs[1]["train_time_s"]  # phase 2's own time
    table = record_table(recs)
    assert table.column("mfu").null_count == 2 and table.column("samples_per_s").null_count == 0


def test_peak_table_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", "tf32") == pytest.approx(378e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp16") == pytest.approx(312e12)
    assert peak_flops("NVIDIA A10G", "fp32") == pytest.approx(31.2e12)
    assert peak_flops("NVIDIA L40S", "bf16") == pytest.approx(362.1e12)
    assert peak_flops("NVIDIA L4", "bf16") == pytest.approx(121e12)
    assert peak_flops("NVIDIA H200", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("cpu", "fp32") is None and peak_flops("Tesla T4", "fp16") is None
    assert mfu(291e9 * 1200, 1.0, 989.4e12) == pytest.approx(0.353, abs=1e-3)
    assert mfu(1e12, 1.0, None) is None
    cpu = torch.device("cpu")
    assert [resolve_precision(p, cpu) for p in ("auto", "fp32", "tf32", "bf16", "fp16")] == [
        "fp32",
        "fp32",
        "fp32",
        "bf16",
        "fp16",
    ]


@pytest.mark.slow
def test_compiled_step_matches_eager_and_compiles_once_per_phase(tiny_data):
    import torch._dynamo.utils as du

    eager = _metrics(Run(tiny_config("avgpool:2x2,1x1"), tiny_data, "cpu").records())
    run = Run(tiny_config("avgpool:2x2,1x1", compile=True), tiny_data, "cpu")
    compiled, graphs = [], []
    for rec in run.records():
        compiled.append(rec)
        graphs.append(du.counters["stats"]["unique_graphs"])
    assert isinstance(run.train_step.fwd, torch._dynamo.eval_frame.OptimizedModule)
    assert graphs[0] == graphs[1] < graphs[2]  # the second epoch of phase 1 reused its graph; phase 2 compiled
    got = _metrics(compiled)
    assert [g[:2] for g in got] == [e[:2] for e in eager]
    for g, e in zip(got, eager):
        assert g[2] == pytest.approx(e[2], rel=1e-4) and g[3] == pytest.approx(e[3], abs=1e-6)


def test_fp16_store_and_stream_give_the_fp32_stores_features(tiny_data, tmp_path):
    from c2f_search.data.sets import Data

    half = Data.from_specs(TINY_DATA, features="fp16", cache_dir=tmp_path / "f16")
    full = Data.from_specs(TINY_DATA, cache_dir=tmp_path / "f32")
    stream = Data.from_specs(TINY_DATA, features="stream", workers=1)
    order = [np.array([3, 1, 4]), np.array([15, 9, 2, 6])]
    f32 = list(full.features("train", 20.0, 128).batches(order))
    f16 = list(half.features("train", 20.0, 128).batches(order))
    streamed = list(stream.features("train", 20.0, 128).batches(order))
    for (a, na), (h, nh), (s, ns) in zip(f32, f16, streamed):
        assert h.dtype == torch.float16 and torch.allclose(h.float(), a, rtol=1e-3, atol=1e-2)
        assert torch.equal(s, a) and torch.equal(na, nh) and torch.equal(na, ns)
    sizes = {k: sum(f.stat().st_size for f in (tmp_path / k).glob("*.arrow")) for k in ("f16", "f32")}
    assert 0.45 < sizes["f16"] / sizes["f32"] < 0.55
    assert stream.norm == pytest.approx(full.norm, rel=1e-6)  # 40 clips: the sample is all of them
    recs = list(Run(tiny_config("fshift:2x1,1x1"), half, "cpu").records())
    assert recs[-1]["schedule_done"] and np.isfinite(recs[-1]["train_loss"])
    with pytest.raises(CheckpointError, match="features"):  # fp16 inputs differ: no silent resume on fp32
        Run(
            tiny_config("fshift:2x1,1x1"),
            full,
            "cpu",
            state=Run(tiny_config("fshift:2x1,1x1"), half, "cpu").state_dict(),
        )


def test_streaming_names_a_clip_that_fails_at_decode_time_and_scans_headers_up_front(tmp_path):
    from c2f_search.data.sets import Data

    from ..conftest import datafile, wav

    good = [{"wav": wav(tmp_path / f"{i}.wav"), "labels": "/m/a"} for i in range(3)]
    nan = {"wav": wav(tmp_path / "nan.wav", value=np.full(8000, np.nan, "float32")), "labels": "/m/b"}
    gone = {"wav": str(tmp_path / "gone.wav"), "labels": "/m/a"}
    f, _ = datafile(tmp_path, good + [nan, gone])
    kw = dict(features="stream", workers=1, norm=(0.0, 1.0), num_mel_bins=32, target_length=64)
    with pytest.raises(DataError, match="gone.wav: file not found"):  # the header scan, before any training
        Data.from_specs(str(f), **kw).features("train", 10.0, 64)
    feats = Data.from_specs(str(f), skip_bad=True, **kw).features("train", 10.0, 64)
    assert feats.kept.tolist() == [0, 1, 2, 3] and feats.bad[0][0].endswith("gone.wav")
    assert next(feats.batches([np.arange(3)]))[0].shape == (3, 32, 64)
    with pytest.raises(DataError, match="nan.wav: contains NaN .*streaming decodes clips only when"):
        list(feats.batches([np.arange(2), np.arange(4)]))


def test_compile_time_is_kept_out_of_training_time(tiny_data, monkeypatch):
    """A compile that takes 1000 s (injected: the compiled step's first call moves the run's clock on by
    1000 s) is compile_time_s, once per phase, and neither train_time_s nor samples_per_s contains it."""
    import time
    import types

    import c2f_search.train.run as train_mod

    skipped = [0.0]
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + skipped[0]))

    def slow_compile(fn, **kw):
        calls = []

        def compiled(*args):
            if not calls:
                skipped[0] += 1000.0
            calls.append(1)
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", slow_compile)
    recs = list(Run(tiny_config("avgpool:2x1,1x1", compile=True), tiny_data, "cpu").records())
    first, both = recs[0]["compile_time_s"], recs[1]["compile_time_s"]
    assert 1000 <= first < 1100 and 2000 <= both < first + 1100  # one compile per phase
    assert recs[-1]["train_time_s"] < 100 and recs[-1]["wall_time_s"] > 2000
    assert all(r["samples_per_s"] > 4 * 8 / 100 for r in recs)  # 4 timed steps of 8, the waits left out
