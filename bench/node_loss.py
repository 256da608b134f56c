"""Node loss on a 3-node local Ray cluster (ray.cluster_utils.Cluster): the time from removing the
node of a running trial to the trial restarting on a surviving node, and the work lost in steps.
Runs the same scenario as tests/test_cluster.py. Usage: python bench/node_loss.py [--repeats 3]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_cluster import node_loss_scenario  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(
        "| run | node loss -> trial restarted on another node (s) | node loss -> its next report (s) | "
        "last report seen before loss (step) | resumed from checkpoint (step) | steps lost |\n|---|---|---|---|---|---|"
    )
    for i in range(a.repeats):
        r = node_loss_scenario(Path(tempfile.mkdtemp()))
        assert r["rc"] == 0, r["log"]
        # checkpoints are taken at every report (each epoch, 15 steps here): the resumed trial repeats only
        # the steps it ran after its last checkpoint, fewer than one epoch
        print(
            f"| {i + 1} | {r['recovery_s']:.1f} | {r['first_report_after_loss_s']:.1f} | "
            f"{r['last_step_before_loss']} | "
            f"{r['resumed_from_step']} | < {r['steps_per_epoch']} (work after step {r['resumed_from_step']}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
