"""Each run owns its random streams: two runs interleaved in one process give what each gives alone in its
own process, and the process-wide RNG is left as it was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from c2f_search import Run

from ..conftest import TINY_DATA, tiny_config

# ------------------------------------------------------------------------------------------- RNG
_ONE_RUN = """
import json, sys
from c2f_search import Data, Run, TrainConfig
data = Data.from_specs("{data}")
cfg = TrainConfig(sys.argv[1], model_kwargs={{"depth": 1}}, batch_size=8, lr=3e-4, warmup_steps=2, freqm=8,
                  timem=32, mixup=0.5, seed=int(sys.argv[2]))
print(json.dumps([[r["step"], r["train_loss"], r["val_metric"]] for r in Run(cfg, data, "cpu").records()]))
"""


@pytest.mark.slow
def test_two_runs_in_one_process_equal_two_processes(tiny_data, tmp_path):
    jobs = [("avgpool:2x1,1x1", 1), ("patch-pi:2x1,1x1", 2)]
    runs = [Run(tiny_config(s, seed=seed), tiny_data, "cpu") for s, seed in jobs]
    torch.manual_seed(123)  # the process-wide RNG is neither used nor disturbed by the runs
    before = torch.get_rng_state()
    its = [r.records() for r in runs]
    together = [[], []]
    for _ in range(2):  # interleaved: each run's records alternate with the other's
        for k, it in enumerate(its):
            r = next(it)
            together[k].append([r["step"], r["train_loss"], r["val_metric"]])
    assert torch.equal(torch.get_rng_state(), before)
    script = tmp_path / "one.py"
    script.write_text(_ONE_RUN.format(data=TINY_DATA))
    for (s, seed), mine in zip(jobs, together):
        p = subprocess.run([sys.executable, str(script), s, str(seed)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(p.stdout.strip().splitlines()[-1]) == mine
