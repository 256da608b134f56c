"""Ray Tune's overhead per trial: one schedule run bare (the core) and as a one-trial Tune search,
side by side in one process. Setup (ray.init, data preparation) is timed separately.

--startup: trial start-up with Tune's reuse_actors off and on, side by side: the same grid of --trials
schedules, compiled, one trial at a time, each configuration on its own empty Inductor cache; then what the
first compiled step of a trial costs in a new process (empty, then warm node cache) and in a reused one.
Usage: python bench/tune_overhead.py [--schedule fshift:2x1,1x2] [--data builtin:events?train=200&val=50]
       python bench/tune_overhead.py --startup [--trials 4]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedule", default="fshift:2x1,1x2")
    ap.add_argument("--data", default="builtin:events?train=600&val=100")
    ap.add_argument("--startup", action="store_true", help="reuse_actors off against on, and compile start-up")
    ap.add_argument("--trials", type=int, default=4, help="--startup: trials per configuration")
    ap.add_argument("--compile-probe", metavar="CACHE_DIR", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.compile_probe:
        return compile_probe(a.compile_probe)
    if a.startup:
        return startup(a)
    import ray

    from c2f_search import Data, Run, TrainConfig
    from c2f_search.search.runner import SearchSettings, resolve_data_args, run_search

    tmp = Path(tempfile.mkdtemp())
    space = tmp / "space.yaml"
    space.write_text(
        f"epochs: 3\nschedules: ['{a.schedule}']\nresources: {{cpu: 2}}\n"
        "fixed: {lr: 1.0e-4, batch_size: 16, warmup_steps: 20}\n"
    )
    data_args = resolve_data_args(a.data, None, None, "auto", False, None, str(tmp / "cache"), None, None)
    t = time.perf_counter()
    data = Data.from_specs(**data_args)
    t_data = time.perf_counter() - t
    cfg = TrainConfig(a.schedule, lr=1e-4, batch_size=16, warmup_steps=20)
    t = time.perf_counter()
    bare = list(Run(cfg, data, "cpu").records())
    t_bare = time.perf_counter() - t
    t = time.perf_counter()
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    t_ray = time.perf_counter() - t
    st = SearchSettings(space=str(space), out=str(tmp / "s"), data=data_args, trials=1, keep_checkpoints=None)
    t = time.perf_counter()
    res = run_search(st, progress_stream=open(os.devnull, "w"))
    t_tune = time.perf_counter() - t
    # Tune's time_total_s: the trainable function's own run (data open, Run, reports, checkpoints);
    # the rest of the search (actor start, imports, driver data check, experiment sync) is setup
    trial = res[0].metrics["time_total_s"]
    print(
        f"| schedule | bare Run s | Tune trial s | extra per trial | search setup s (excluded) | ray.init s |"
        f" driver data s |\n|---|---|---|---|---|---|---|\n"
        f"| {a.schedule} | {t_bare:.1f} | {trial:.1f} | {100 * (trial - t_bare) / t_bare:+.1f}% | "
        f"{t_tune - trial:.1f} | {t_ray:.1f} | {t_data:.1f} |"
    )
    print(f"bare final metric {bare[-1]['val_metric']:.3f}, tune final metric {res[0].metrics['val_metric']:.3f}")


STARTUP_SCHEDULES = [
    "fshift:2x1,1x1",
    "avgpool:2x1,1x1",
    "maxpool:2x1,1x1",
    "none:1x2",
    "fshift:4x1,1x1",
    "avgpool:4x1,1x1",
]


def startup(a):
    import ray

    from c2f_search.search.runner import SearchSettings, resolve_data_args, run_search

    tmp = Path(tempfile.mkdtemp())
    space = tmp / "space.yaml"
    space.write_text(
        f"epochs: 2\nschedules: {STARTUP_SCHEDULES[: a.trials]}\nresources: {{cpu: 2}}\n"
        "fixed: {lr: 1.0e-4, batch_size: 16, warmup_steps: 5, compile: true}\n"
    )
    data_args = resolve_data_args(
        "builtin:events?train=96&val=32", None, None, "auto", False, None, str(tmp / "cache"), None, None
    )
    rows = {}
    for reuse in (False, True):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / f"inductor-{reuse}")  # empty; trial workers inherit it
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        st = SearchSettings(
            space=str(space),
            out=str(tmp / f"s-{reuse}"),
            data=data_args,
            keep_checkpoints=None,
            model_kwargs={"depth": 1},
            reuse_actors=reuse,
        )
        t = time.perf_counter()
        run_search(st, progress_stream=open(os.devnull, "w"))
        wall = time.perf_counter() - t
        ray.shutdown()
        trials = [
            [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
            for d in (tmp / f"s-{reuse}" / "search").iterdir()
            if (d / "result.json").is_file()
        ]
        inside = sum(t[-1]["time_total_s"] for t in trials)
        rows[reuse] = (
            wall,
            inside,
            len({r["pid"] for t in trials for r in t}),
            {t[0]["schedule"]: [r["val_metric"] for r in t] for t in trials},
        )
    n = a.trials
    print(
        "| reuse_actors | trials | processes | search wall s | per trial s | trainables' own time s "
        "(time_total_s) | outside the trainables s | outside, per trial s |\n|---|---|---|---|---|---|---|---|"
    )
    for reuse, (wall, inside, procs, _) in rows.items():
        print(
            f"| {'on' if reuse else 'off'} | {n} | {procs} | {wall:.1f} | {wall / n:.1f} | {inside:.1f} | "
            f"{wall - inside:.1f} | {(wall - inside) / n:.1f} |"
        )
    print(f"same validation metrics at every evaluation, off and on: {rows[False][3] == rows[True][3]}")
    cache = tmp / "probe-cache"
    probes = [
        json.loads(
            subprocess.run(
                [sys.executable, __file__, "--compile-probe", str(cache)], check=True, capture_output=True, text=True
            ).stdout.splitlines()[-1]
        )
        for _ in range(2)
    ]
    print(
        f"\n| the first compiled step of a trial (forward, backward, Adam) | s |\n|---|---|\n"
        f"| new process, empty Inductor cache | {probes[0]['first']:.1f} |\n"
        f"| new process, the node's cache warm (reuse_actors off) | {probes[1]['first']:.1f} |\n"
        f"| same process after torch._dynamo.reset() (reuse_actors on, as trials run now) | "
        f"{probes[1]['reset']:.1f} |\n"
        f"| same process, compiled entry kept (no reset) | {probes[1]['kept']:.1f} |"
    )


def compile_probe(cache_dir):
    """In a fresh process: the first step of a compiled TrainStep (ast-tiny depth 1, 64 x 128), then of a new
    model of the same shape with the compiled entry kept, then after torch._dynamo.reset(). Prints JSON."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    import torch

    from c2f_search.geometry import Geometry
    from c2f_search.models.phase import build_for_phase
    from c2f_search.objectives.supervised import ClassificationLoss
    from c2f_search.train.step import TrainStep, adam

    cpu = torch.device("cpu")

    def first_step():
        model = build_for_phase("ast-tiny", {"num_classes": 10, "depth": 1}, "fshift", 2, Geometry(64, 256))
        step = TrainStep(model, ClassificationLoss(False), "fp32", cpu, True)
        x, y = torch.randn(16, *model.geometry.input_size), torch.randint(0, 10, (16,))
        t = time.perf_counter()
        step(x, y, adam(model.parameters(), 1e-4, 0.0, (0.9, 0.999), cpu))
        return time.perf_counter() - t

    out = {"first": first_step(), "kept": first_step()}
    torch._dynamo.reset()
    out["reset"] = first_step()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
