"""The test split, kept checkpoints, confirm, the HTML report in a real headless browser (Debian's
chromium), and optuna-dashboard on the study a search leaves: real Ray, Optuna, Parquet."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from c2f_search.analysis.rows import load_rows

from ..conftest import TINY_DATA, craft_search, grid_space, run_cli

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _browser(tmp_path):
    """A real headless chromium through chromedriver; skipped only outside CI when it is not installed."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for f in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path / 'chromium-profile'}",):
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def _load(driver, path):
    """(console errors, [(complete, naturalWidth)] of every image) of a page opened from disk."""
    driver.get(path.resolve().as_uri())
    images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return errors, images


@pytest.mark.slow
def test_the_browser_check_sees_broken_pages(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img src='missing.png'><script>undefined_fn()</script></body></html>")
    driver = _browser(tmp_path)
    try:
        errors, images = _load(driver, page)
    finally:
        driver.quit()
    assert len(errors) >= 2 and images == [[True, 0]]


@pytest.mark.slow
def test_test_split_confirm_report_and_dashboard(tmp_path):
    import ray

    ray.shutdown()
    out = tmp_path / "s"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    test_spec = "builtin:events?train=10&val=20&seed=5"
    r = run_cli(
        [
            "search",
            "--space",
            str(grid_space(tmp_path, ["none:1x2", "avgpool:2x3,1x1"])),
            "--data",
            TINY_DATA,
            "--test",
            test_spec,
            "--depth",
            "1",
            "--keep-checkpoints",
            "1",
            "--epochs",
            "3",
            "--out",
            str(out),
        ],
        tmp_path / "search.log",
        env,
        400,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    rows = load_rows(out).to_pylist()
    # --keep-checkpoints 1: what the front may need (phase ends, final-phase evaluations better than every
    # earlier one) survives, and of the rest only each trial's most recent
    rotated = False
    for tid in {x["trial_id"] for x in rows}:
        t = [x for x in rows if x["trial_id"] == tid]
        n = 1 if t[0]["method"] == "none" else 2
        needed, best = [], -1.0
        for x in t:
            needed.append(x["phase_end"] or (x["phase"] == n and x["val_metric"] > best))
            best = max(best, x["val_metric"]) if x["phase"] == n else best
        others = [k for k, nd in enumerate(needed) if not nd]
        for k, x in enumerate(t):
            assert bool(x["checkpoint_path"]) == (needed[k] or (others and k == others[-1])), (tid, k, t)
        rotated |= len(others) > 1
    assert rotated, "no checkpoint was rotated: the test shows nothing"
    front = [x for x in pq.read_table(out / "front.parquet").to_pylist() if x["front"] == "final"]
    assert front and all(x["test_metric"] is not None and x["val_metric"] is not None for x in front)
    # the test metric is the checkpoint's metric on the test split, computed by the core alone
    from c2f_search import Data
    from c2f_search.files import load_checkpoint
    from c2f_search.train.evaluator import evaluate_state

    settings = json.loads((out / "search.json").read_text())
    data = Data.from_specs(**settings["data"], test=settings["test"])
    state = load_checkpoint(f"{front[0]['checkpoint_path']}/state.pt")
    assert front[0]["test_metric"] == evaluate_state(state, data, "test")
    assert "test=" in (out / "summary.txt").read_text()
    assert (
        run_cli(
            ["pareto", str(out), "--metric", "test", "--plot", str(tmp_path / "test.png")],
            tmp_path / "pareto.log",
            env,
            200,
        ).returncode
        == 0
    )

    # seeds: the baseline and the top schedule, two new seeds each, as one Tune run
    r = run_cli(["confirm", str(out), "--top", "1", "--seeds", "2"], tmp_path / "confirm.log", env, 400)
    assert r.returncode == 0, r.stdout[-3000:]
    seeds = pq.read_table(out / "confirm_seeds.parquet").to_pylist()
    assert sorted((x["schedule"], x["seed"]) for x in seeds) == [
        ("avgpool:2x2.25,1x0.75", 1),
        ("avgpool:2x2.25,1x0.75", 2),
        ("none:1x3", 1),
        ("none:1x3", 2),
    ]
    summary = pq.read_table(out / "confirm.parquet").to_pylist()
    assert [x["seeds"] for x in summary] == [2, 2] and (out / "confirm.png").stat().st_size > 10_000
    assert "holds at every seed" in r.stdout

    # the report: one file, opened from disk in a real browser
    assert run_cli(["report", str(out)], tmp_path / "report.log", env, 200).returncode == 0
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Table 2/3" in page and "Learning curves" in page and "Seeds (confirm)" in page and '"test":' in page
    driver = _browser(tmp_path)
    try:
        errors, images = _load(driver, out / "report.html")
    finally:
        driver.quit()
    assert not errors, errors
    assert len(images) >= 4 and all(ok and w > 400 for ok, w in images)  # front (val, test), curves, confirm

    # optuna-dashboard opens the study the search left
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dash = subprocess.Popen(
        [shutil.which("optuna-dashboard"), f"sqlite:///{out / 'optuna.db'}", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        studies, deadline = None, time.time() + 60
        while studies is None and time.time() < deadline and dash.poll() is None:
            try:
                studies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2))
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        (st,) = studies["study_summaries"]
        assert st["study_name"] == "c2f-search" and st["directions"] == ["maximize", "minimize"]
        detail = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{st['study_id']}?after=0"))
        assert len(detail["trials"]) == 2 and detail["objective_names"] == ["val_metric", "train_flops"]
    finally:
        dash.terminate()
        dash.wait()


HOSTILE_ID = '<img src=x onerror="window.__c2f_xss=1">'
HOSTILE_METRIC = "<script>window.__c2f_xss=2</script>"


def _hostile_target(d):
    """A target's folder as a stranger could share it: hostile text in its table and its metadata."""
    import pyarrow as pa

    from c2f_search.analysis.transfer import SIDE_KEYS, cost_numbers, rank_agreement

    folder = d / "confirm" / "evil"
    folder.mkdir(parents=True)
    (folder / "target.json").write_text("{}")
    rows = [
        {
            "source_trial": HOSTILE_ID,
            "form": HOSTILE_METRIC,
            "metric_name": HOSTILE_METRIC,
            **{f"{side}_{k}": 1 for side in ("proxy", "target") for k in SIDE_KEYS},
            "proxy_schedule": "none:1x2",
            "target_schedule": schedule,
        }
        for schedule in ("none:1x4", "fshift:2x2,1x2")
    ]
    meta = {
        "rank_correlation": rank_agreement(rows),
        "cost": cost_numbers(rows, 1e12, 2, 1e12, 0.0),
        "header": [f"target {HOSTILE_ID}"],
    }
    pq.write_table(
        pa.Table.from_pylist(rows).replace_schema_metadata({k: json.dumps(v) for k, v in meta.items()}),
        folder / "confirm.parquet",
    )


def test_report_shows_hostile_text_literally_and_runs_no_script(tmp_path):
    from c2f_search.analysis.report import write_report

    craft_search(tmp_path, (HOSTILE_ID, "t<b>2</b>"), HOSTILE_METRIC)  # as a stranger could share one
    _hostile_target(tmp_path)
    write_report(tmp_path)
    driver = _browser(tmp_path)
    try:
        errors, images = _load(driver, tmp_path / "report.html")
        ran = driver.execute_script("return window.__c2f_xss === undefined ? null : window.__c2f_xss")
        text = driver.execute_script("return document.body.innerText")
    finally:
        driver.quit()
    assert ran is None and not errors, (ran, errors)  # no script ran, no injected image was requested
    assert all(ok and w > 400 for ok, w in images) and len(images) == 2  # only the plots: front and curves
    assert f"trial {HOSTILE_ID}" in text and f"end {HOSTILE_METRIC}" in text and "t<b>2</b>" in text
    assert "Transfer to target evil" in text and f"target {HOSTILE_ID}" in text  # the target's table and lines
    assert f"vs baseline {HOSTILE_METRIC}" in text and "Kendall's tau" in text and "cost: the proxy search" in text
