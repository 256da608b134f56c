"""The demo as a new user runs it: wall time from a cold cache (data generated, features extracted),
the baseline's best accuracy, and how loaded the machine was (load average sampled every 10 s, since
other work on the same cores slows every trial).
Usage: python bench/demo.py [--out DIR]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="keep the demo's folder here (default: a temporary one)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    out = Path(a.out) if a.out else tmp / "demo"
    env = {**os.environ, "C2F_CACHE": str(tmp / "cache"), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    loads, done = [], threading.Event()

    def sample():
        while not done.wait(10):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample, daemon=True).start()
    t = time.perf_counter()
    with open(tmp / "demo.log", "w") as log:
        rc = subprocess.run(
            [sys.executable, "-m", "c2f_search.cli", "demo", "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    wall = time.perf_counter() - t
    done.set()
    if rc:
        sys.exit(f"demo failed (exit {rc}); see {tmp / 'demo.log'}")
    import pyarrow.parquet as pq

    table = pq.read_table(out / "table.parquet").to_pylist()
    base = max((q for q in table if q["schedule"].startswith("none:")), key=lambda q: q["best_final_metric"])
    print(
        f"demo: {wall / 60:.1f} min wall, {len(table)} finished trials, baseline best accuracy "
        f"{base['best_final_metric']:.3f}, {os.cpu_count()} CPUs, 1-min load average during the run "
        f"{min(loads, default=0):.1f}..{max(loads, default=0):.1f} (mean {sum(loads) / max(1, len(loads)):.1f})"
    )


if __name__ == "__main__":
    main()
