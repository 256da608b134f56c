"""Train through `Run` on a GPU and measure the whole step: samples/s, MFU, time saved against FLOPs saved,
compile time, peak memory, the loader against the model, Dynamo's counters and the host syncs per step; and
resume a fp16 run (GradScaler, noise) from its phase-1 checkpoint against the same run uninterrupted.

Each part is one `Run` (its prefetcher, device-side preparation, NaN check and records) in a process of its
own: a fresh compiler, its own peak memory and a hard time limit. The data set is synthetic (WAV clips, a
datafile and class_labels_indices.csv in a temporary folder); its feature stores are extracted before the
first part. A line is printed as each phase ends and --out is rewritten after every part, so a run cut
short keeps what it measured.

  --quick       ast-base, 128 x 1024, batch 16, bf16, compiled: avgpool at C = 4, 2, 1 (one run), fshift and
                patch-pi at C = 4, and the fp16 resume; at most 6 minutes on one H200
  (default)     the per-precision table: --models x --precisions x --methods, each a run at C = 4, 2, 1;
                --chunk K/N runs the K-th of N slices (K/10 for the defaults: each fits a 10-minute device call)
  --device cpu  a smoke run of the script itself (CI): ast-tiny with one block, 64 x 128, batch 8, fp32, eager;
                its figures are not performance figures

Exit 1 when a part did not finish within its time limit, a compiled phase fell back to eager or skipped CUDA
graphs, a training step made the host wait anywhere but the expected places (EXPECTED_SYNCS), or the resumed
run differs from the uninterrupted one. The speed targets are reported, not enforced. Without a CUDA GPU
(and without --device cpu) it says so and exits 0. A bad --chunk, --parts or C2F_BENCH_INJECT is one line and
exit 2. Tests force failures with C2F_BENCH_INJECT=eager-fallback,resume-mismatch,host-sync.

Usage: python bench/gpu_step.py --quick [--out gpu.md]
       python bench/gpu_step.py [--models ast-tiny ast-base] [--precisions ...] [--methods ...] [--chunk K/N]
       python bench/gpu_step.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch._subclasses.fake_tensor import FakeTensor

import c2f_search
from c2f_search import Run, TrainConfig
from c2f_search.compress import get_method
from c2f_search.data.frontend import DATASET_STATS
from c2f_search.data.prefetch import Prefetcher
from c2f_search.data.sets import Data
from c2f_search.files import atomic_write, load_checkpoint, save_checkpoint
from c2f_search.train.callbacks.base import Callback
from c2f_search.train.pipeline import InputPipeline
from c2f_search.train.rng import RunRNG
from c2f_search.train.step import TrainStep

METHODS = ["fshift", "avgpool", "maxpool", "patch-bl", "patch-pi", "tpatchout", "fpatchout", "patchout"]
PRECISIONS = ["fp32", "tf32", "bf16", "fp16"]
INJECT = set(filter(None, os.environ.get("C2F_BENCH_INJECT", "").split(",")))
INJECTIONS = ("eager-fallback", "resume-mismatch", "host-sync")  # faults the tests force
RESUME_RTOL = 1e-3  # kernels with atomic adds (attention backward) are not bitwise repeatable on a GPU
CPU_LIMIT_S = 300  # per part of the CPU smoke run, on a shared machine
TARGETS = {"samples_per_s": 1200, "time_over_flops": 0.9, "loader_over_model": 2.0}
SOURCES = {Path(c2f_search.__file__).parent: "c2f_search", Path(__file__).parent: "bench"}

# Where a training interval may make the host wait: (file, function, its caller or None, what it is).
EXPECTED_SYNCS = [
    ("c2f_search/train/step.py", "sum_finite", None, "NaN/inf check, once every 25 steps"),
    ("c2f_search/train/run.py", "_train_until", None, "the interval's mean loss, after its last NaN check"),
    ("c2f_search/train/precision.py", "synchronize", "records", "the interval clock"),
    ("c2f_search/train/precision.py", "synchronize", "_train_until", "timing a compiled step's warm-up"),
    (
        "c2f_search/data/prefetch.py",
        "__call__",
        None,
        "PinnedRing: a buffer reused once its copy is done (prefetch thread)",
    ),
]


@dataclass
class Part:
    name: str
    model: str
    schedule: str  # {E}: epochs per phase
    precision: str
    limit_s: float  # on a GPU; CPU_LIMIT_S on the CPU
    resume: bool = False  # fp16 + noise, resumed from its phase-1 checkpoint and compared


@dataclass
class Setup:
    device: str
    depth: int | None
    mel: int
    frames: int
    batch: int
    clips: int
    epochs: int
    compile: bool


def quick_parts(model: str, cpu: bool) -> list[Part]:
    """Budget on an H200: about 30 s of data, then these limits, 6 minutes in all."""
    p = "fp32" if cpu else "bf16"
    return [
        Part("avgpool", model, "avgpool:4x{E},2x{E},1x{E}", p, 120),
        Part("fshift", model, "fshift:4x{E},coarse-only", p, 50),
        Part("patch-pi", model, "patch-pi:4x{E},coarse-only", p, 50),
        # one epoch per phase: fewer steps for kernels with atomic adds to drift apart in
        Part("fp16-resume", model, "avgpool:2x1,1x1", "fp16", 110, resume=True),
    ]


def full_parts(a) -> list[Part]:
    """One run per model, precision and method at C = 4, 2, 1; ast-base's phases compile in about 20 s each."""
    return [
        Part(f"{m}/{p}/{meth}", m, f"{meth}:4x{{E}},2x{{E}},1x{{E}}", p, 140 if "base" in m else 80)
        for m in a.models
        for p in a.precisions
        for meth in a.methods
    ]


def chunk(parts: list[Part], k: int, n: int) -> list[Part]:
    """The k-th (1-based) of n contiguous slices with about equal sums of time limits: each part goes to the
    slice its midpoint falls in, so a device call's worst case is known before it starts."""
    total, start, out = sum(p.limit_s for p in parts), 0.0, []
    for p in parts:
        if (k - 1) * total / n <= start + p.limit_s / 2 < k * total / n:
            out.append(p)
        start += p.limit_s
    return out


def train_config(part: Part, s: Setup) -> TrainConfig:
    """AudioSet's SpecAugment (scaled to the input) and mixup, so the device-side preparation is a real one;
    AST's Speech Commands noise in the resumed part. One record per phase (evaluated at its end)."""
    noise = {"noise": True} if part.resume else {}
    return TrainConfig(
        part.schedule.format(E=s.epochs),
        model=part.model,
        batch_size=s.batch,
        model_kwargs={"depth": s.depth} if s.depth else {},
        precision=part.precision,
        compile=s.compile,
        eval_every=f"{s.epochs}epoch",
        freqm=s.mel * 48 // 128,
        timem=s.frames * 192 // 1024,
        mixup=0.5,
        **noise,
    )


# ------------------------------------------------------------------ data
def write_clips(d: Path, s: Setup, files: int = 16, classes: int = 10) -> dict:
    """`files` distinct WAV clips (noise and a tone each, class = file % classes), listed over and over in the
    datafiles: s.clips training and s.batch * 2 validation clips, exactly s.frames frames long at 10 ms."""
    sr = 16000
    t = np.arange(int(sr * (0.025 + (s.frames - 1) * 0.010))) / sr
    rng = np.random.default_rng(0)
    for i in range(files):
        y = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
        sf.write(str(d / f"{i}.wav"), y.astype("float32"), sr, subtype="PCM_16")
    (d / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n" + "".join(f"{k},/m/c{k},c{k}\n" for k in range(classes))
    )
    out = {"labels": str(d / "class_labels_indices.csv"), "cache": str(d / "cache")}
    for split, n in (("train", s.clips), ("val", 2 * s.batch)):
        entries = [{"wav": str(d / f"{i % files}.wav"), "labels": f"/m/c{i % files % classes}"} for i in range(n)]
        (d / f"{split}.json").write_text(json.dumps({"data": entries}))
        out[split] = str(d / f"{split}.json")
    return out


def load_data(files: dict, s: Setup) -> Data:
    return Data.from_specs(
        files["train"],
        files["val"],
        labels=files["labels"],
        norm=DATASET_STATS["audioset"],
        cache_dir=files["cache"],
        num_mel_bins=s.mel,
        target_length=s.frames,
    )


def extract_stores(parts: list[Part], files: dict, s: Setup) -> None:
    """Every store the parts read, once, before any part's clock starts (the parts find them in the cache)."""
    data = load_data(files, s)
    for part in parts:
        cfg = train_config(part, s)
        schedule = cfg.schedule
        pipe = InputPipeline(cfg, data, torch.device("cpu"))
        for phase in schedule.phases:
            for split in ("train", "val"):
                pipe.features(split, phase.C, get_method(phase.method or schedule.method))


# ------------------------------------------------------------------ inside a part: what the probe counts
def dynamo_counts() -> dict:
    from torch._dynamo.utils import counters

    return {
        "frames": counters["frames"]["total"],
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "fallbacks": sum(n for msg, n in counters["unimplemented"].items() if "recompile limit" in msg),
        "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
    }


def _source(path: str) -> str | None:
    p = Path(path)
    for root, name in SOURCES.items():
        if p.is_relative_to(root):
            return f"{name}/{p.relative_to(root)}"
    return None


class LoaderClock:
    """One training interval's loader: the producer's busy time per batch (gathering into the pinned ring, in
    the prefetch thread) and the consumer's waits on the queue, both while the model trains."""

    def __init__(self):
        self.batches, self.busy_s, self.waits = 0, 0.0, []

    def produce(self, batches):
        it = iter(batches)
        while True:
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            self.busy_s += time.perf_counter() - t
            self.batches += 1
            yield b

    def summary(self, batch: int) -> dict:
        steady = self.waits[1:]  # the first get waits for the thread to start
        return {
            "loader_sps": self.batches * batch / self.busy_s if self.busy_s else None,
            "wait_ms": 1e3 * sum(steady) / len(steady) if steady else None,
        }


class Probe(Callback):
    """Measures a part from inside its runs. Wraps the calls that make the host wait for the device (value
    reads of device tensors, synchronize on the device, its streams and events) and counts them by call site;
    times the training prefetcher's producer and consumer; snapshots Dynamo's counters at every record.
    A training interval is the time inside ``InputPipeline.train_batches``; a warm-up step is a call of a
    compiled ``TrainStep`` before its ``warmup_calls`` (compilation, CUDA graph capture)."""

    READS = ("item", "tolist", "cpu", "nonzero", "__bool__", "__float__", "__int__")

    def __init__(self, device: torch.device):
        self.device_type = device.type
        self.active = self.training = False
        self.warm = None  # the thread running a warm-up step
        self.syncs: Counter = Counter()
        self.lock = threading.Lock()
        self.loader, self.steps, self.rows, self.fell_back, self.resumed = None, 0, [], False, False
        self.wrappers: set = set()
        self._install()

    # -- wrapping
    def _wrap(self, owner, name, make):
        fn = make(getattr(owner, name))
        self.wrappers.add(getattr(fn, "__wrapped__", fn).__code__)
        setattr(owner, name, fn)

    def _install(self):
        for name in self.READS:
            self._wrap(torch.Tensor, name, self._read_counter)
        if self.device_type == "cuda":
            for owner, name in (
                (torch.cuda, "torch.cuda.synchronize"),
                (torch.cuda.Stream, "Stream.synchronize"),
                (torch.cuda.Event, "Event.synchronize"),
            ):
                self._wrap(owner, "synchronize", lambda orig, name=name: self._sync_counter(orig, name))
        self._wrap(TrainStep, "__call__", self._step_flag)
        self._wrap(InputPipeline, "train_batches", self._interval_flag)
        self._wrap(Prefetcher, "__init__", self._timed_producer)
        self._wrap(Prefetcher, "__next__", self._timed_consumer)

    def _read_counter(self, orig):
        probe = self

        def read(t, *a, **k):  # a fake tensor (compilation traces with them) holds no value to wait for
            if probe.active and t.device.type == probe.device_type and not isinstance(t, FakeTensor):
                probe.count(f"Tensor.{orig.__name__}")
            return orig(t, *a, **k)

        return read

    def _sync_counter(self, orig, name):
        probe = self

        def sync(*a, **k):
            if probe.active:
                probe.count(name)
            return orig(*a, **k)

        return sync

    def _step_flag(self, orig):
        probe = self

        def step(ts, *a, **k):
            probe.warm = threading.get_ident() if ts.calls < ts.warmup_calls else None
            try:
                return orig(ts, *a, **k)
            finally:
                probe.warm = None

        return step

    def _interval_flag(self, orig):
        probe = self

        @contextmanager
        def train_batches(pipe, C, order, method):
            probe.training, probe.loader = True, probe.loader or LoaderClock()
            try:
                with orig(pipe, C, order, method) as batches:
                    yield batches
            finally:
                probe.training = False

        return train_batches

    def _timed_producer(self, orig):
        probe = self

        def init(pf, batches, *a, **k):
            pf.bench_clock = probe.loader if probe.training else None
            orig(pf, pf.bench_clock.produce(batches) if pf.bench_clock else batches, *a, **k)

        return init

    def _timed_consumer(self, orig):
        def next_batch(pf):
            t = time.perf_counter()
            try:
                return orig(pf)
            finally:
                if pf.bench_clock is not None:
                    pf.bench_clock.waits.append(time.perf_counter() - t)

        return next_batch

    # -- counting
    def count(self, call: str) -> None:
        site, where = self._site()
        with self.lock:
            self.syncs[(site, call, where)] += 1

    def _site(self) -> tuple[str, str]:
        """The two innermost frames of this project that led here (and the library frame the call was made
        in), and what kind of wait it is: an expected one, 'unexpected' inside a training step, or outside."""
        frames, library, evaluating = [], None, False
        f = sys._getframe(2)
        while f is not None:
            code, src = f.f_code, _source(f.f_code.co_filename)
            if src is None:
                if not frames and library is None:  # the call was made inside a library
                    library = f"{Path(code.co_filename).name}:{f.f_lineno} {code.co_name}"
            elif code not in self.wrappers:
                evaluating = evaluating or src == "c2f_search/train/evaluator.py"
                if len(frames) < 2:
                    frames.append((src, f.f_lineno, code.co_name))
            f = f.f_back
        site = " <- ".join(f"{s}:{n} {fn}" for s, n, fn in frames) + (f" (in {library})" if library else "")
        if self.warm == threading.get_ident():
            return site, "expected: inside a warm-up step (compilation, CUDA graph capture)"
        for src, fn, caller, what in EXPECTED_SYNCS:
            if (
                frames
                and frames[0][::2] == (src, fn)
                and (caller is None or len(frames) > 1 and frames[1][2] == caller)
            ):
                return site, f"expected: {what}"
        if self.training:
            return site, "UNEXPECTED: inside the training steps"
        return site, "outside the training steps: evaluation" if evaluating else "outside the training steps"

    # -- callbacks
    def on_fit_start(self, run):
        self.active, self.last = True, (dict(run.counters), dynamo_counts())

    def on_step_end(self, run):
        self.steps += 1

    def on_eval_end(self, run, rec):
        counters, dyn = dict(run.counters), dynamo_counts()
        (c0, d0), self.last = self.last, (counters, dyn)
        clock, self.loader = self.loader or LoaderClock(), None
        phase = {k: dyn[k] - d0[k] for k in dyn}
        # once Dynamo gives up on the step function, later phases run it eagerly without counting again
        eager = run.compiled and (phase["fallbacks"] > 0 or self.fell_back and phase["frames"] == 0)
        self.fell_back = self.fell_back or eager
        self.rows.append(
            {
                "phase": rec["phase"],
                "C": rec["C"],
                "samples_per_s": rec["samples_per_s"],
                "mfu": rec["mfu"],
                "flops_per_sample": run.ledger.step_flops(rec["C"]) / run.cfg.batch_size,
                "compile_s": counters["compile_time_s"] - c0["compile_time_s"],
                "eager": eager,
                "resumed": self.resumed,
                **clock.summary(run.cfg.batch_size),
                **phase,
            }
        )

    def on_fit_end(self, run):
        self.active = False

    def sync_table(self) -> list[dict]:
        order = {"UNEXPECTED": 0, "expected": 1}  # then the waits outside the training steps
        with self.lock:
            counts = list(self.syncs.items())
        return [
            {"site": site, "call": call, "kind": kind, "count": n}
            for (site, call, kind), n in sorted(counts, key=lambda kv: (order.get(kv[0][2].split(":")[0], 2), -kv[1]))
        ]


class ReadsAValueBack(Callback):
    """C2F_BENCH_INJECT=host-sync: reads a device value back after every step, as a careless callback would."""

    def on_step_end(self, run):
        next(run.model.parameters()).sum().item()


def inject_eager_fallback() -> None:
    """C2F_BENCH_INJECT=eager-fallback: the step function gets one compiled entry, so the second phase's shape
    falls back to eager (the limit is lowered again after ``allow_recompiles`` raises it)."""
    import torch._dynamo.config as dc

    import c2f_search.train.step as step

    raise_limits = step.allow_recompiles

    def one_entry(entries: int = 64) -> None:
        raise_limits(entries)
        dc.recompile_limit = 1

    step.allow_recompiles = one_entry


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS of the process"


def compare_resume(full: list[dict], resumed: list[dict], after: int) -> dict:
    """The uninterrupted run's records after step `after` against the resumed run's: equal when the resumed run
    has each of them and every loss is within RESUME_RTOL (the metric is shown, not compared)."""
    later, mine = [r for r in full if r["step"] > after], {r["step"]: r for r in resumed}
    if not later or any(r["step"] not in mine for r in later):
        return {"rows": [], "max_rel": float("inf"), "ok": False}
    rows = [
        {
            "step": a["step"],
            "C": a["C"],
            **{
                f"{k}_{w}": r[k]
                for w, r in (("full", a), ("resumed", mine[a["step"]]))
                for k in ("train_loss", "val_loss", "val_metric")
            },
        }
        for a in later
    ]
    rel = max(
        abs(x[f"{k}_full"] - x[f"{k}_resumed"]) / max(abs(x[f"{k}_full"]), 1e-12)
        for x in rows
        for k in ("train_loss", "val_loss")
    )
    return {"rows": rows, "max_rel": rel, "ok": rel <= RESUME_RTOL}


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    part, s = Part(**spec["part"]), Setup(**spec["setup"])
    device, out = torch.device(s.device), Path(spec["result"])
    if "eager-fallback" in INJECT:
        inject_eager_fallback()
    data, cfg, probe = load_data(spec["files"], s), train_config(part, s), Probe(device)
    callbacks = [probe] + ([ReadsAValueBack()] if "host-sync" in INJECT else [])
    run = Run(cfg, data, device, callbacks=callbacks)
    result = {
        "part": part.name,
        "model": part.model,
        "method": run.method.name,
        "precision": run.precision,
        "device": run.device_name,
        "compiled": run.compiled,
        "rows": probe.rows,
    }

    def save(done: bool) -> None:  # after every record: a part cut short by its time limit keeps what it measured
        peak, kind = peak_memory(device)
        result.update(syncs=probe.sync_table(), steps=probe.steps, peak_bytes=peak, peak_kind=kind, done=done)
        atomic_write(out, json.dumps(result))

    checkpoint = None
    for rec in run.records():
        r = probe.rows[-1]
        print(
            f"  [{part.name}] phase {r['phase']} C={r['C']}: {r['samples_per_s']:.0f} samples/s, compile "
            f"{r['compile_s']:.1f} s, loader {r['loader_sps'] or 0:.0f} samples/s",
            file=sys.stderr,
            flush=True,
        )
        if part.resume and rec["phase_end"] and not rec["schedule_done"]:
            checkpoint = save_checkpoint(run.state_dict(), out.with_suffix(".phase1.pt"))
        save(done=False)
    if part.resume:
        state = load_checkpoint(checkpoint)
        if "resume-mismatch" in INJECT:  # the resumed run draws other augmentations than the original
            state["rng"] = RunRNG(cfg.seed + 1, device).state_dict()
        probe.resumed = True
        resumed = Run(cfg, data, device, state=state, callbacks=callbacks).fit()
        result["resume"] = compare_resume(run.history, resumed, state["step"])
    save(done=True)
    return 0


# ------------------------------------------------------------------ the parts, each in its own process
def run_part(part: Part, s: Setup, files: dict, workdir: Path) -> dict:
    """The part in a process of its own, in a session of its own so that a timeout ends its compile workers too."""
    stem = workdir / part.name.replace("/", "_")
    spec, result = stem.with_suffix(".spec.json"), stem.with_suffix(".result.json")
    spec.write_text(json.dumps({"part": asdict(part), "setup": asdict(s), "files": files, "result": str(result)}))
    limit = part.limit_s if s.device == "cuda" else CPU_LIMIT_S
    t = time.perf_counter()
    with subprocess.Popen([sys.executable, __file__, "--child", str(spec)], start_new_session=True) as p:
        try:
            rc = p.wait(timeout=limit)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except BaseException as e:  # the time limit, or Ctrl-C (which the child's session does not get)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            status = f"timed out after {limit:.0f} s"
    got = json.loads(result.read_text()) if result.exists() else {"part": part.name, "model": part.model, "rows": []}
    if status == "ok" and not got.get("done"):
        status = "failed (no result)"
    return {**got, "status": status, "wall_s": time.perf_counter() - t, "limit_s": limit}


# ------------------------------------------------------------------ the report
def reference(r: dict, results: list[dict]) -> dict | None:
    """The C = 1 row to compare a part's rows with: its own run's, else the first of the same model and precision."""
    same = [o for o in results if (o["model"], o.get("precision")) == (r["model"], r.get("precision"))]
    for o in [r, *same]:
        for x in o["rows"]:
            if x["C"] == 1 and not x["resumed"]:
                return x
    return None


def saved_ratio(row: dict, ref: dict | None) -> float | None:
    if ref is None or row["C"] == 1 or not row["samples_per_s"]:
        return None
    return (1 - ref["samples_per_s"] / row["samples_per_s"]) / (1 - row["flops_per_sample"] / ref["flops_per_sample"])


def _f(v, fmt="{:.0f}", none="") -> str:
    return none if v is None else fmt.format(v)


def phase_table(results: list[dict]) -> list[str]:
    lines = [
        "| part | C | precision | samples/s | MFU | GFLOPs/sample | time saved / FLOPs saved | compile s | "
        "loader samples/s | loader / model | waits ms/step | frames compiled | graphs | graph breaks | "
        "eager | cudagraph skips |",
        "|" + "---|" * 16,
    ]
    for r in results:
        for x in r["rows"]:
            ratio = x["loader_sps"] / x["samples_per_s"] if x["loader_sps"] and x["samples_per_s"] else None
            lines.append(
                f"| {r['part']} | {x['C']}{' (resumed)' if x['resumed'] else ''} | {r['precision']} | "
                f"{_f(x['samples_per_s'])} | {_f(x['mfu'], '{:.1%}')} | {x['flops_per_sample'] / 1e9:.2f} | "
                f"{_f(saved_ratio(x, reference(r, results)), '{:.2f}')} | {x['compile_s']:.1f} | "
                f"{_f(x['loader_sps'])} | {_f(ratio, '{:.1f}x')} | {_f(x['wait_ms'], '{:.2f}')} | {x['frames']} | "
                f"{x['graphs']} | {x['graph_breaks']} | {'YES' if x['eager'] else 'no'} | {x['cudagraph_skips']} |"
            )
    return lines


def part_table(results: list[dict]) -> list[str]:
    lines = [
        "| part | result | wall s (limit) | steps | peak memory | unexpected syncs per step |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        bad = sum(x["count"] for x in r.get("syncs", []) if x["kind"].startswith("UNEXPECTED"))
        peak = f"{r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_kind']})" if "peak_bytes" in r else ""
        lines.append(
            f"| {r['part']} | {r['status']} | {r['wall_s']:.0f} ({r['limit_s']:.0f}) | {r.get('steps', '')} | "
            f"{peak} | {_f(bad / r['steps'] if r.get('steps') else None, '{:.3f}')} |"
        )
    return lines


def sync_table(results: list[dict]) -> list[str]:
    lines = ["| part | call site | call | what it is | count | per step |", "|---|---|---|---|---|---|"]
    for r in results:
        for x in r.get("syncs", []):
            lines.append(
                f"| {r['part']} | `{x['site']}` | {x['call']} | {x['kind']} | {x['count']} | "
                f"{_f(x['count'] / r['steps'] if r['steps'] else None, '{:.3f}')} |"
            )
    return lines


def resume_table(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        if "resume" in r:
            v = r["resume"]
            lines += [
                f"{r['part']} ({r['precision']}, GradScaler, noise): resumed from the phase-1 checkpoint, largest "
                f"relative difference in a loss {v['max_rel']:.2e} (tolerance {RESUME_RTOL:g}): "
                f"{'equal' if v['ok'] else 'DIFFERENT'}.",
                "",
                "| step | C | train loss: uninterrupted / resumed | val loss | val metric |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {x['step']} | {x['C']} | {x['train_loss_full']:.6f} / {x['train_loss_resumed']:.6f} | "
                f"{x['val_loss_full']:.6f} / {x['val_loss_resumed']:.6f} | "
                f"{x['val_metric_full']:.4f} / {x['val_metric_resumed']:.4f} |"
                for x in v["rows"]
            ]
    return lines


def targets(results: list[dict]) -> list[str]:
    """The issue's targets, on the avgpool rows of a quick run."""
    run = next((r for r in results if r["part"] == "avgpool" and r["rows"]), None)
    if run is None:
        return ["- not evaluated: no avgpool run"]
    by_C = {x["C"]: x for x in run["rows"]}

    def line(what: str, value: float, goal: float, fmt: str) -> str:
        return f"- {what} at least {goal:g}: {fmt.format(value)}: {'met' if value >= goal else 'NOT met'}"

    out = []
    if 1 in by_C:
        out.append(
            line("samples/s at C = 1", by_C[1]["samples_per_s"], TARGETS["samples_per_s"], "{:.0f}")
            + f" (MFU {_f(by_C[1]['mfu'], '{:.1%}', 'unknown')})"
        )
    for C in (2, 4):
        if C in by_C and 1 in by_C:
            out.append(
                line(
                    f"time saved / FLOPs saved at C = {C}",
                    saved_ratio(by_C[C], by_C[1]),
                    TARGETS["time_over_flops"],
                    "{:.2f}",
                )
            )
    if by_C.get(4, {}).get("loader_sps"):
        out.append(
            line(
                "loader / model at C = 4",
                by_C[4]["loader_sps"] / by_C[4]["samples_per_s"],
                TARGETS["loader_over_model"],
                "{:.1f}x",
            )
        )
    return out


def failures(results: list[dict]) -> list[str]:
    fails = []
    for r in results:
        name = r["part"]
        if r["status"] != "ok":
            fails.append(f"{name}: {r['status']}")
        for x in r["rows"]:
            where = f"{name} phase {x['phase']} (C={x['C']}{', resumed' if x['resumed'] else ''})"
            if x["eager"]:
                fails.append(f"{where}: the compiled step fell back to eager (Dynamo's recompile limit)")
            if x["cudagraph_skips"]:
                fails.append(f"{where}: {x['cudagraph_skips']} CUDA graph skip(s)")
        for x in r.get("syncs", []):
            if x["kind"].startswith("UNEXPECTED"):
                fails.append(
                    f"{name}: {x['count']} host sync(s) inside the training steps at {x['site']} ({x['call']})"
                )
        if "resume" in r and not r["resume"]["ok"]:
            fails.append(
                f"{name}: the resumed run differs from the uninterrupted one (largest relative difference "
                f"{r['resume']['max_rel']:.2e} > {RESUME_RTOL:g})"
            )
    return fails


def document(results: list[dict], a, s: Setup, data_s: float, planned: int) -> str:
    dev = next((r["device"] for r in results if "device" in r), s.device)
    how = ("compiled (CUDA graphs)" if s.device == "cuda" else "compiled") if s.compile else "eager"
    smoke = (
        "**CPU smoke run**: it checks that the script and its counters work; its figures are not performance figures. "
        if s.device == "cpu"
        else ""
    )
    depth = f"depth {s.depth}, " if s.depth else ""
    lines = [
        f"{smoke}Device: {dev}; torch {torch.__version__}; {depth}{s.mel} mel x "
        f"{s.frames} frames, batch {s.batch}, {how}, fused Adam; {s.clips} training clips, {s.epochs} epoch(s) per "
        f"phase, SpecAugment and mixup 0.5 on the device; each part a `Run` in its own process; data set "
        f"written and its stores extracted in {data_s:.0f} s. MFU is against the dense peak "
        f"(c2f_search/train/precision.py PEAK_TFLOPS); samples/s, MFU and the ratios leave compilation and warm-up "
        f"out (the records' compile_time_s).",
        "",
        *phase_table(results),
        "",
        *part_table(results),
        "",
        "Host syncs by call site (every wait the parts' runs made, in all threads):",
        "",
        *sync_table(results),
    ]
    resume = resume_table(results)
    lines += ["", *resume] if resume else []
    if a.quick:
        lines += ["", "Targets (ast-base, 128 x 1024, batch 16, bf16, on an H100/H200):", ""]
        lines += targets(results) if s.device == "cuda" else ["- not evaluated: a CPU smoke run"]
    fails = failures(results)
    lines += [
        "",
        f"Checks ({len(results)} of {planned} parts run):",
        "",
        *(f"FAIL: {f}" for f in fails),
        f"{len(fails)} check(s) failed" if fails else "all checks passed",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ command line
def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="the short run: ast-base, bf16, through Run; at most 6 minutes on one H200"
    )
    ap.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: a smoke run of the script (depth 1, small input, fp32, eager)",
    )
    ap.add_argument(
        "--models",
        nargs="+",
        choices=[m for m in c2f_search.list_models() if m.startswith("ast-")],
        help="default: ast-base for --quick, ast-tiny and ast-base otherwise (ast-tiny on the CPU)",
    )
    ap.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS, help="the full run's")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="the full run's")
    ap.add_argument("--parts", nargs="+", help="run only these parts (names as the table prints them)")
    ap.add_argument(
        "--chunk",
        help="K/N: run the K-th of N contiguous slices of the parts, with about equal sums of "
        "time limits (the default full run: K/10, each within a 10-minute call)",
    )
    ap.add_argument("--depth", type=_at_least(1), help="transformer depth (default: the model's; 1 on the CPU)")
    ap.add_argument("--mel", type=_at_least(16), help="mel bins, >= 16 (default 128; 64 on the CPU)")
    ap.add_argument(
        "--frames",
        type=_at_least(FRAME_QUANTUM, FRAME_QUANTUM),
        help=f"frames at full resolution, a multiple of {FRAME_QUANTUM} (C=4 of 16-frame patches; default 1024; "
        "128 on the CPU)",
    )
    ap.add_argument("--batch", type=_at_least(1), help="batch size (default 16; 8 on the CPU)")
    ap.add_argument("--clips", type=_at_least(1), help="training clips, at least --batch (default 1024; 32 on the CPU)")
    ap.add_argument("--epochs", type=_at_least(1), help="epochs per phase (default 3; 1 on the CPU)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on for cuda, off for cpu")
    ap.add_argument("--out", help="write the report (markdown) to this file, after every part")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    s = setup_from(a)
    if s.clips < s.batch:
        ap.error(f"--clips {s.clips}: fewer training clips than one batch (--batch {s.batch}); give at least {s.batch}")
    return a


FRAME_QUANTUM = 64  # the largest C (4) times AST's 16-frame patch: every phase's token grid divides


def _at_least(low: int, multiple: int = 1):
    """An argparse type: an integer >= `low` and a multiple of `multiple`."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low or v % multiple:
            what = f" and a multiple of {multiple}" if multiple > 1 else ""
            raise argparse.ArgumentTypeError(f"{v}: must be >= {low}{what}")
        return v

    return parse


def setup_from(a) -> Setup:
    cpu = a.device == "cpu"
    pick = lambda v, gpu, on_cpu: v if v is not None else (on_cpu if cpu else gpu)  # noqa: E731
    return Setup(
        a.device,
        pick(a.depth, None, 1),
        pick(a.mel, 128, 64),
        pick(a.frames, 1024, 128),
        pick(a.batch, 16, 8),
        pick(a.clips, 1024, 32),
        pick(a.epochs, 3, 1),
        pick(a.compile, True, False),
    )


def plan(a) -> list[Part]:
    cpu = a.device == "cpu"
    a.models = a.models or (["ast-tiny"] if cpu else ["ast-base"] if a.quick else ["ast-tiny", "ast-base"])
    parts = quick_parts(a.models[0], cpu) if a.quick else full_parts(a)
    if a.parts:
        unknown = sorted(set(a.parts) - {p.name for p in parts})
        if unknown:
            raise SystemExit(
                f"gpu_step.py: --parts {unknown[0]}: no such part; known: {', '.join(p.name for p in parts)}"
            )
        parts = [p for p in parts if p.name in a.parts]
    if a.chunk:
        k, _, n = a.chunk.partition("/")
        if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n) <= len(parts)):
            raise SystemExit(f"gpu_step.py: --chunk {a.chunk}: write K/N with 1 <= K <= N <= {len(parts)} (the parts)")
        parts = chunk(parts, int(k), int(n))
        if not parts:
            raise SystemExit(f"gpu_step.py: --chunk {a.chunk} holds no part; use fewer slices")
    return parts


def main(argv=None) -> int:
    a = parse(argv)
    if a.child:
        return child_main(a.child)
    if a.device == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA GPU here: bench/gpu_step.py measures training on a GPU, so nothing was measured "
            "(--device cpu runs it as a smoke test)"
        )
        return 0
    try:
        parts = plan(a)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    if INJECT - set(INJECTIONS):
        print(
            f"gpu_step.py: C2F_BENCH_INJECT={','.join(sorted(INJECT))}: known faults are {', '.join(INJECTIONS)}",
            file=sys.stderr,
        )
        return 2
    s = setup_from(a)
    results = []
    with tempfile.TemporaryDirectory(prefix="c2f-gpu-step-") as d:
        t = time.perf_counter()
        files = write_clips(Path(d), s)
        extract_stores(parts, files, s)
        data_s = time.perf_counter() - t
        print(
            f"data: {s.clips} clips, stores extracted in {data_s:.0f} s; parts: {', '.join(p.name for p in parts)} "
            f"(time limits {sum(p.limit_s for p in parts) if s.device == 'cuda' else CPU_LIMIT_S * len(parts):.0f} s "
            f"in all)",
            file=sys.stderr,
            flush=True,
        )
        for part in parts:
            results.append(run_part(part, s, files, Path(d)))
            print(
                f"[{part.name}] {results[-1]['status']} in {results[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True
            )
            if a.out:
                atomic_write(a.out, document(results, a, s, data_s, len(parts)))
    print(document(results, a, s, data_s, len(parts)))
    return 1 if failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
