"""bench/gpu_step.py on a machine without a GPU: it says so and exits 0; with --device cpu its quick run trains
every part through `Run` and checks its own counters, and a forced eager fallback, resume mismatch or host
sync makes it fail (C2F_BENCH_INJECT)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args, inject=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("C2F_BENCH_INJECT", None)
    if inject:
        env["C2F_BENCH_INJECT"] = inject
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_step.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )


def _phase_rows(report: str) -> dict:
    """(part, C) -> the phase table's cells, from the markdown report."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in report.splitlines() if line.startswith("| ")
    ]
    return {(r[0], r[1]): r for r in rows if len(r) == 16 and r[0] != "part"}


@pytest.mark.slow
def test_without_a_gpu_it_says_so_and_exits_0():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    p = _bench("--quick")
    assert p.returncode == 0 and "no CUDA GPU" in p.stdout


@pytest.mark.slow
def test_quick_cpu_run_trains_every_part_through_run_and_checks_its_counters(tmp_path):
    p = _bench("--quick", "--device", "cpu", "--out", str(tmp_path / "gpu.md"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.rstrip().endswith("all checks passed")
    report = (tmp_path / "gpu.md").read_text()
    assert report.startswith("**CPU smoke run**")
    rows = _phase_rows(report)
    assert set(rows) == {
        ("avgpool", "4"),
        ("avgpool", "2"),
        ("avgpool", "1"),
        ("fshift", "4"),
        ("patch-pi", "4"),
        ("fp16-resume", "2"),
        ("fp16-resume", "1"),
        ("fp16-resume", "1 (resumed)"),
    }
    for r in rows.values():
        assert float(r[3]) > 0 and float(r[8]) > 0 and r[14] == "no"  # samples/s, loader samples/s, not eager
    assert rows[("fshift", "4")][6] and not rows[("avgpool", "1")][6]  # time / FLOPs saved against avgpool C = 1
    # the counters counted: the NaN check once per interval of 4 steps (12 steps in 3 intervals), no step sync
    nan_check = re.search(
        r"\| avgpool \| `c2f_search/train/step.py:\d+ sum_finite[^|]*` \| Tensor.__bool__ \| "
        r"expected: NaN/inf check[^|]* \| (\d+) \| ([\d.]+) \|",
        report,
    )
    assert nan_check and nan_check.groups() == ("3", "0.250")
    assert "UNEXPECTED" not in report
    assert "| avgpool | ok |" in report and "relative difference in a loss 0.00e+00" in report


@pytest.mark.slow
def test_an_injected_eager_fallback_fails_the_run_naming_the_phases():
    p = _bench("--quick", "--device", "cpu", "--compile", "--parts", "avgpool", inject="eager-fallback")
    assert p.returncode == 1
    fails = [line for line in p.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == [
        "FAIL: avgpool phase 2 (C=2): the compiled step fell back to eager (Dynamo's recompile limit)",
        "FAIL: avgpool phase 3 (C=1): the compiled step fell back to eager (Dynamo's recompile limit)",
    ]
    assert "c2f-search: torch.compile reached recompile_limit=1" in p.stderr  # the library's own line
    rows = _phase_rows(p.stdout)
    assert rows[("avgpool", "4")][11] == "1" and rows[("avgpool", "4")][14] == "no"  # phase 1 compiled its frame


@pytest.mark.slow
def test_an_injected_resume_mismatch_and_host_sync_fail_the_run():
    p = _bench("--quick", "--device", "cpu", "--parts", "fshift", "fp16-resume", inject="resume-mismatch,host-sync")
    assert p.returncode == 1
    fails = [line for line in p.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 3, p.stdout[-3000:]
    assert re.fullmatch(
        r"FAIL: fshift: 4 host sync\(s\) inside the training steps at bench/gpu_step.py:\d+ "
        r"on_step_end <- c2f_search/train/run.py:\d+ _train_until \(Tensor.item\)",
        fails[0],
    )
    assert fails[1].startswith("FAIL: fp16-resume: 12 host sync(s) inside the training steps at bench/gpu_step.py")
    assert fails[2].startswith("FAIL: fp16-resume: the resumed run differs from the uninterrupted one")


@pytest.mark.slow
def test_a_bad_chunk_or_part_is_one_line_and_exit_2():
    for args, msg in (
        (["--chunk", "3/2"], "--chunk 3/2: write K/N with 1 <= K <= N"),
        (["--quick", "--parts", "nope"], "--parts nope: no such part; known: avgpool, fshift"),
    ):
        p = _bench("--device", "cpu", *args)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and msg in p.stderr and not p.stdout
    p = _bench("--device", "cpu", "--quick", inject="typo")
    assert p.returncode == 2 and "C2F_BENCH_INJECT=typo: known faults are eager-fallback" in p.stderr
