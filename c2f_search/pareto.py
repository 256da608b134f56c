"""Pareto fronts of validation metric (up) against training FLOPs (down), from a search folder.

Tables (docs/results.md documents the columns):
  * rows   - every (trial, evaluation) report: the anytime view, each row a checkpoint a user can take;
  * final  - one row per trial whose schedule finished;
  * fronts - the non-dominated subsets of each.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from .errors import NoResults
from .io import atomic_write
from .records import RECORD_FIELDS, ROW_FIELDS, row_table
from .results import write_table
from .schedule import parse_schedule

ROW_COLUMNS = list(ROW_FIELDS)


def pareto_front(points) -> list[int]:
    """Indices of non-dominated (metric, flops) points: metric up, flops down.

    Exact duplicates are kept once (the first); NaN metrics never make the front.
    """
    order = sorted((i for i, (m, f) in enumerate(points) if m == m and f == f),
                   key=lambda i: (points[i][1], -points[i][0], i))
    front, best = [], float("-inf")
    for i in order:
        if points[i][0] > best:  # strictly better metric than every cheaper (or equal-cost) point
            front.append(i)
            best = points[i][0]
    return front


def hypervolume_2d(points, ref) -> float:
    """Area dominated by `points` (metric up, flops down) and bounded by ref = (metric_ref, flops_ref)."""
    mref, fref = ref
    xs = sorted({(f, m) for m, f in points if m > mref and f < fref})
    area, best = 0.0, mref
    # sweep by increasing FLOPs: between consecutive x the dominated height is the best metric so far
    for k, (f, m) in enumerate(xs):
        best = max(best, m)
        nxt = xs[k + 1][0] if k + 1 < len(xs) else fref
        area += (nxt - f) * (best - mref)
    return area


def experiment_location(search_dir, filesystem=None):
    """(pyarrow filesystem, path) of the Tune experiment of a search folder.

    The storage chosen at search time (``--storage`` URI, recorded in DIR/search.json) wins;
    a filesystem object given here is used with the path as it is.
    """
    import pyarrow.fs as pafs
    if filesystem is not None:
        return filesystem, f"{str(search_dir).rstrip('/')}/search"
    settings = Path(search_dir) / "search.json"
    storage = json.loads(settings.read_text()).get("storage") if settings.is_file() else None
    if storage:
        fs, root = pafs.FileSystem.from_uri(storage)
        return fs, f"{root.rstrip('/')}/search"
    return pafs.LocalFileSystem(), str(Path(search_dir).resolve() / "search")


def load_rows(search_dir, filesystem=None) -> pa.Table:
    """Every report of every trial, one row per (trial, step), last write wins. Reads local
    folders, shared filesystems and URIs (s3://, gs://) alike through pyarrow filesystems."""
    import pyarrow.fs as pafs
    fs, root = experiment_location(search_dir, filesystem)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise NoResults(f"{search_dir}: no search results (expected {root}); run 'c2f-search search' first")
    rows = {}
    for t in sorted(fs.get_file_info(pafs.FileSelector(root)), key=lambda i: i.path):
        if t.type != pafs.FileType.Directory:
            continue
        names = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(t.path))}
        if "result.json" not in names:
            continue
        status = "error" if ("error.txt" in names or "error.pkl" in names) else None
        with fs.open_input_stream(f"{t.path}/result.json") as f:
            lines = f.read().decode().splitlines()
        trial_rows = []
        for line in lines:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if "val_metric" not in r:
                continue
            ck = r.get("checkpoint_dir_name")
            trial_rows.append({**{k: r.get(k) for k in RECORD_FIELDS}, "trial_id": r.get("trial_id", t.base_name),
                               "checkpoint_path": f"{t.path}/{ck}" if ck and ck in names else None,
                               "lr": r.get("lr"), "batch_size": r.get("batch_size"), "model": r.get("model")})
        done = any(x["schedule_done"] for x in trial_rows)
        for x in trial_rows:
            x["status"] = "finished" if done else (status or "pruned")
            # the averaged model and a pretraining trial's fine-tune share the last step: rows of their own
            rows[(x["trial_id"], x["step"], bool(x["averaged"]), x["metric_name"])] = x
    if not rows:
        raise NoResults(f"{search_dir}: the search has no reported results yet")
    ordered = sorted(rows.values(), key=lambda x: (x["trial_id"], x["step"]))
    return row_table(ordered)


def analyse(rows: pa.Table, ref=None) -> dict:
    """Final and anytime fronts, hypervolume and the FLOPs saving against the `none` baseline."""
    R = rows.to_pylist()
    last = {}
    for r in R:
        if r["status"] == "finished" and r["schedule_done"]:
            last[r["trial_id"]] = r
    final = list(last.values())
    # a pretraining search reports a proxy metric per epoch and the downstream one at the end: the
    # anytime view compares rows of the final metric only
    metric = final[-1]["metric_name"] if final else R[-1]["metric_name"]
    every, R = R, [r for r in R if r["metric_name"] == metric]
    fi = pareto_front([(r["val_metric"], r["train_flops"]) for r in final])
    ai = pareto_front([(r["val_metric"], r["train_flops"]) for r in R])
    final_front = [final[i] for i in fi]
    anytime_front = [R[i] for i in ai]
    if ref is None:
        ref = (0.0, 1.1 * max(r["train_flops"] for r in R))
    base = [r for r in final if parse_schedule(r["schedule"]).is_baseline]
    baseline = None
    if base:
        b = max(base, key=lambda r: r["val_metric"])
        # the paper's budget quantity: FLOPs the baseline spent until it first reached its best metric
        runs = [r for r in R if r["trial_id"] == b["trial_id"]]
        first_best = min((r for r in runs if r["val_metric"] >= b["val_metric"]), key=lambda r: r["step"])
        baseline = {"trial_id": b["trial_id"], "schedule": b["schedule"], "val_metric": b["val_metric"],
                    "train_flops": first_best["train_flops"]}
    for r in final_front + anytime_front:
        r["flops_saving_vs_baseline"] = None
        if baseline is not None and r["val_metric"] >= baseline["val_metric"]:
            # budget mode (the paper's Table 2): FLOPs until this trial first reached the baseline's best
            reach = min((x for x in R if x["trial_id"] == r["trial_id"] and x["step"] <= r["step"]
                         and x["val_metric"] >= baseline["val_metric"]), key=lambda x: x["step"])
            r["flops_saving_vs_baseline"] = 1 - reach["train_flops"] / baseline["train_flops"]
    pts = lambda rs: [(r["val_metric"], r["train_flops"]) for r in rs]  # noqa: E731
    return {"final": final, "final_front": final_front, "anytime_front": anytime_front, "baseline": baseline,
            "reference_point": {"val_metric": ref[0], "train_flops": ref[1]},
            # hypervolume in metric x GFLOPs so the numbers read at a glance
            "hypervolume_final": hypervolume_2d(pts(final), ref) / 1e9,
            "hypervolume_anytime": hypervolume_2d(pts(R), ref) / 1e9,
            "counts": {s: len({r["trial_id"] for r in every if r["status"] == s}) for s in ("finished", "pruned", "error")}}


def plot(rows: pa.Table, res: dict, path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = rows.to_pylist()
    metric = R[0]["metric_name"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    g = 1e9
    ax.scatter([r["train_flops"] / g for r in R], [r["val_metric"] for r in R], s=10, c="0.75",
               label="every trial-epoch (anytime)", zorder=1)
    methods = sorted({r["method"] for r in res["final"]})
    cmap = plt.get_cmap("tab10")
    for k, m in enumerate(methods):
        pts = [r for r in res["final"] if r["method"] == m]
        ax.scatter([r["train_flops"] / g for r in pts], [r["val_metric"] for r in pts], s=36, color=cmap(k),
                   label=f"{m} (finished)", zorder=3, edgecolor="k", linewidth=0.4)
    for key, style, lab in (("anytime_front", dict(color="0.4", ls=":"), "anytime front"),
                            ("final_front", dict(color="C3", lw=2), "final front")):
        fr = sorted(res[key], key=lambda r: r["train_flops"])
        if fr:
            ax.step([r["train_flops"] / g for r in fr], [r["val_metric"] for r in fr], where="post", label=lab,
                    zorder=2, **style)
    b = res["baseline"]
    if b:
        ax.axhline(b["val_metric"], color="k", ls="--", lw=0.8)
        ax.scatter([b["train_flops"] / g], [b["val_metric"]], marker="*", s=220, color="gold", edgecolor="k",
                   zorder=4, label=f"baseline {b['schedule']}")
    ax.set_xlabel("training GFLOPs (cumulative, whole run)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"Coarse-to-fine schedules: {metric} vs training compute\n"
                 f"hypervolume (final) = {res['hypervolume_final']:.4g} vs ref "
                 f"({res['reference_point']['val_metric']:g}, {res['reference_point']['train_flops'] / g:.4g} GFLOPs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def summary_text(res: dict) -> str:
    c, b = res["counts"], res["baseline"]
    lines = [f"trials: {c['finished']} finished, {c['pruned']} pruned/stopped, {c['error']} failed",
             f"reference point: metric {res['reference_point']['val_metric']:g}, "
             f"{res['reference_point']['train_flops'] / 1e9:.4g} GFLOPs",
             f"hypervolume (metric x GFLOPs): final {res['hypervolume_final']:.6g}, anytime {res['hypervolume_anytime']:.6g}"]
    if b:
        lines.append(f"baseline {b['schedule']}: metric {b['val_metric']:.4f} first reached at {b['train_flops'] / 1e9:.4g} GFLOPs")
    lines.append("final front (metric up, FLOPs down):")
    for r in sorted(res["final_front"], key=lambda r: r["train_flops"]):
        s = r.get("flops_saving_vs_baseline")
        label = f"{r['model']} {r['schedule']}" if r.get("model") else r["schedule"]
        label += " (averaged)" if r.get("averaged") else ""
        lines.append(f"  {label:<34} {r['metric_name']}={r['val_metric']:.4f}  {r['train_flops'] / 1e9:10.4g} GFLOPs"
                     + (f"  saves {100 * s:.1f}% vs baseline" if s is not None else ""))
    return "\n".join(lines)


def export(search_dir, out=None, plot_path=None, ref=None, rows_path=None, filesystem=None) -> dict:
    """Write the fronts (and all rows), draw the plot; returns the analysis."""
    rows = load_rows(search_dir, filesystem)
    res = analyse(rows, ref)
    d = Path(search_dir)
    write_table(rows, rows_path or d / "trials.parquet")
    if out:
        out = Path(out)
        front = [dict(r, front="final") for r in res["final_front"]] + \
                [dict(r, front="anytime") for r in res["anytime_front"]]
        write_table(pa.Table.from_pylist(front), out)
    if plot_path:
        plot(rows, res, plot_path)
    return res
