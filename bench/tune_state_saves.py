"""What saving Tune's experiment state costs the driver, at Tune's default cadence ('auto': at most every
10 s) and at the ones c2f-search could use (every 1 s, every step of Tune's loop): the same small grid
search under each, one after the other, counting the saves and the driver time spent in them.
Usage: python bench/tune_state_saves.py [--data builtin:events?train=40&val=20&seed=3]
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
SCHEDULES = [
    "none:1x2",
    "avgpool:2x1,1x1",
    "fshift:2x1,1x1",
    "maxpool:2x1,1x1",
    "patch-pi:2x1,1x1",
    "avgpool:4x1,1x1",
    "fshift:4x1,1x1",
    "maxpool:4x1,1x1",
]


def one(period: str, data: str, tmp: Path) -> dict:
    """Run in a fresh process: Tune reads TUNE_GLOBAL_CHECKPOINT_S when its loop starts."""
    from ray.tune.execution import tune_controller

    from c2f_search.search.runner import SearchSettings, resolve_data_args, run_search

    saves = []  # each save with the start of its copy into DIR/search (the copy runs in a thread)
    checkpoint = tune_controller.TuneController.checkpoint

    def timed(self, force=False, wait=False):
        t, last = time.perf_counter(), self._checkpoint_manager._last_save_time
        checkpoint(self, force=force, wait=wait)
        if self._checkpoint_manager._last_save_time != last:
            saves.append(time.perf_counter() - t)

    tune_controller.TuneController.checkpoint = timed
    space = tmp / "space.yaml"
    space.write_text("epochs: 2\nschedules: [" + ", ".join(f"'{s}'" for s in SCHEDULES) + "]\nfixed: {batch_size: 8}\n")
    st = SearchSettings(
        space=str(space),
        out=str(tmp / f"s-{period}"),
        model_kwargs={"depth": 1},
        data=resolve_data_args(data, None, None, "auto", False, None, None, None, None),
    )
    t = time.perf_counter()
    run_search(st)
    return {
        "period": period,
        "wall_s": time.perf_counter() - t,
        "saves": len(saves),
        "in_saves_s": sum(saves),
        "median_ms": 1e3 * sorted(saves)[len(saves) // 2],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="builtin:events?train=40&val=20&seed=3")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if a.one:
        print(json.dumps(one(a.one, a.data, tmp)))
        return
    print(f"{len(SCHEDULES)}-trial grid, {a.data}, depth 1, {os.cpu_count()} CPUs")
    print("TUNE_GLOBAL_CHECKPOINT_S | saves | driver time in saves (s) | median save (ms) | search wall (s)")
    for period in ("auto", "1", "0"):
        out = subprocess.run(
            [sys.executable, __file__, "--data", a.data, "--one", period],
            capture_output=True,
            text=True,
            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": period},
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{period:>24} | {r['saves']:5d} | {r['in_saves_s']:24.2f} | {r['median_ms']:16.1f} | {r['wall_s']:.0f}")


if __name__ == "__main__":
    main()
