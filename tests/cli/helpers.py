"""What the command-line tests share: the tiny training flags, the CLI as a subprocess, and waiting for a
real process to reach the moment a test interrupts it at."""

import os
import re
import signal
import sys
import time

from c2f_search.cli import main

from ..conftest import TINY_DATA

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
TRAIN = ["train", "--data", TINY_DATA, "--depth", "1", "--batch-size", "8", "--no-progress"]
S = ["--schedule", "fshift:2x1,1x1"]
CLI = [sys.executable, "-m", "c2f_search.cli"]
PROGRESS = re.compile(r"^fbank .*\| *\d+/\d+ \[")  # a search's feature extraction shows tqdm bars


def cli(args, capsys):
    """(exit code, the non-empty stderr lines) of one command run in this process."""
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]


def interruptible():
    """SIGINT as a terminal gives it: a suite started in the background (`cmd &`, nohup) passes SIGINT
    ignored to its children, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait(cond, proc, timeout=240):
    """True once `cond()` holds; fails if `proc` ended before it did."""
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return True
        assert proc.poll() is None, f"the command ended (rc {proc.returncode}) before the moment to test"
        time.sleep(0.05)
    return False
