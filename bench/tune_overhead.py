"""Ray Tune's overhead per trial: one schedule run bare (the core) and as a one-trial Tune search,
side by side in one process. Setup (ray.init, data preparation) is timed separately.
Usage: python bench/tune_overhead.py [--schedule fshift:2x1,1x2] [--data builtin:events?train=200&val=50]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedule", default="fshift:2x1,1x2")
    ap.add_argument("--data", default="builtin:events?train=600&val=100")
    a = ap.parse_args()
    import ray
    from c2f_search import Data, Run, TrainConfig
    from c2f_search.search.runner import SearchSettings, resolve_data_args, run_search

    tmp = Path(tempfile.mkdtemp())
    space = tmp / "space.yaml"
    space.write_text(f"epochs: 3\nschedules: ['{a.schedule}']\nresources: {{cpu: 2}}\n"
                     "fixed: {lr: 1.0e-4, batch_size: 16, warmup_steps: 20}\n")
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
    print(f"| schedule | bare Run s | Tune trial s | extra per trial | search setup s (excluded) | ray.init s |"
          f" driver data s |\n|---|---|---|---|---|---|---|\n"
          f"| {a.schedule} | {t_bare:.1f} | {trial:.1f} | {100 * (trial - t_bare) / t_bare:+.1f}% | "
          f"{t_tune - trial:.1f} | {t_ray:.1f} | {t_data:.1f} |")
    print(f"bare final metric {bare[-1]['val_metric']:.3f}, tune final metric {res[0].metrics['val_metric']:.3f}")


if __name__ == "__main__":
    main()
