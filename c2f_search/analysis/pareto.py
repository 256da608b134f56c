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

from ..errors import C2FError, NoResults
from ..files import atomic_write
from ..layout import SearchDir
from ..schema import row_table, write_table
from .formatting import pct
from .rows import STATUSES, by_trial, experiment_location, load_rows, search_settings


def pareto_front(points) -> list[int]:
    """Indices of non-dominated (metric, flops) points: metric up, flops down.

    Exact duplicates are kept once (the first); NaN metrics never make the front.
    """
    order = sorted(
        (i for i, (m, f) in enumerate(points) if m == m and f == f), key=lambda i: (points[i][1], -points[i][0], i)
    )
    front, best = [], float("-inf")
    for i in order:
        if points[i][0] > best:  # strictly better metric than every cheaper (or equal-cost) point
            front.append(i)
            best = points[i][0]
    return front


def front_ranks(points) -> list[int]:
    """Non-dominated sorting of (metric, flops) points, metric up, flops down: rank 0 is the front, rank 1 the
    front once rank 0 is removed, and so on. A point is dominated by one at least as good in both and better
    in one, so equal points share a rank; a NaN metric ranks last."""
    n = len(points)

    def dominates(a, b):
        (ma, fa), (mb, fb) = points[a], points[b]
        return ma >= mb and fa <= fb and (ma > mb or fa < fb)

    left, r, ranks = {i for i in range(n) if points[i][0] == points[i][0] and points[i][1] == points[i][1]}, 0, {}
    while left:
        front = {i for i in left if not any(dominates(j, i) for j in left)}
        ranks |= dict.fromkeys(front, r)
        left -= front
        r += 1
    return [ranks.get(i, r) for i in range(n)]


def crowding_distance(points) -> list[float]:
    """NSGA-II's crowding distance of each point of one front: the sum over both objectives of the gap between
    its neighbours, over that objective's range; the two ends of the front get infinity."""
    n, dist = len(points), [0.0] * len(points)
    for k in (0, 1) if n else ():
        order = sorted(range(n), key=lambda i: points[i][k])
        span = points[order[-1]][k] - points[order[0]][k] if n else 0.0
        dist[order[0]] = dist[order[-1]] = float("inf")
        for a, i, b in zip(order, order[1:], order[2:]):
            if span > 0:
                dist[i] += (points[b][k] - points[a][k]) / span
    return dist


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


def _finite(x) -> bool:
    return x is not None and x == x


def final_phase(rows: list[dict]) -> list[dict]:
    """A trial's evaluations in its schedule's last phase (C=1, or the coarse-only ablation's C)."""
    final_C = rows[0]["final_C"]
    return [r for r in rows if r["C"] == final_C and _finite(r["val_metric"])]


def baseline_reference(trials: dict[str, list[dict]]) -> dict | None:
    """The paper's baseline reference: the best epoch (the earliest, on ties) of the best finished
    baseline trial, with its metric and the FLOPs and time spent until then. None without a baseline."""
    best = None
    for rows in trials.values():
        if rows[0]["status"] != "finished" or not rows[0]["is_baseline"]:
            continue
        ok = [r for r in rows if _finite(r["val_metric"])]
        top = max(ok, key=lambda r: (r["val_metric"], -r["step"]), default=None)
        if top is not None and (best is None or top["val_metric"] > best["val_metric"]):
            best = top
    return best


def trial_quantities(rows: list[dict], ref: dict | None) -> dict:
    """Table 2/3 quantities of one trial against the baseline reference `ref`.

    Budget mode: the earliest evaluation of the final phase at or above the reference metric; the
    FLOPs and time saving are taken there (an evaluation in a coarse phase never counts). Convergence
    mode: the best final-phase metric minus the baseline's best.
    """
    last, fin = rows[-1], final_phase(rows)
    best = max(fin, key=lambda r: (r["val_metric"], -r["step"]), default=None)
    q = {
        "trial_id": last["trial_id"],
        "schedule": last["schedule"],
        "method": last["method"],
        "is_baseline": last["is_baseline"],
        "status": last["status"],
        "metric_name": last["metric_name"],
        "seed": last.get("seed"),
        "final_metric": last["val_metric"],
        "total_flops": last["train_flops"],
        "total_time_s": last["train_time_s"],
        "compile_time_s": last.get("compile_time_s") or 0.0,
        "best_final_metric": best["val_metric"] if best else None,
        "best_final_epoch": best["epoch"] if best else None,
        "convergence_delta": None,
        "budget_reached": None,
        "budget_epoch": None,
        "budget_metric": None,
        "budget_flops": None,
        "flops_saving": None,
        "time_saving": None,
    }
    if ref is None:
        return q
    if best is not None:
        q["convergence_delta"] = best["val_metric"] - ref["val_metric"]
    hit = next((r for r in fin if r["val_metric"] >= ref["val_metric"]), None)
    q["budget_reached"] = hit is not None
    if hit is not None:
        q.update(
            budget_epoch=hit["epoch"],
            budget_metric=hit["val_metric"],
            budget_flops=hit["train_flops"],
            flops_saving=1 - hit["train_flops"] / ref["train_flops"],
            time_saving=1 - hit["train_time_s"] / ref["train_time_s"] if ref["train_time_s"] else None,
        )
    return q


def analyse(rows: pa.Table, ref=None) -> dict:
    """Final and anytime fronts, hypervolume, the baseline reference and the Table 2/3 quantities of
    every finished trial (docs/results.md)."""
    R = rows.to_pylist()
    every = R
    # a pretraining search reports a proxy metric per epoch and the downstream one at the end: fronts
    # and tables compare rows of the final metric only
    ends = [t[-1] for t in by_trial(R).values()]
    metric = next(
        (r["metric_name"] for r in ends if r["status"] == "finished" and r["schedule_done"]), R[-1]["metric_name"]
    )
    R = [r for r in R if r["metric_name"] == metric]
    varies = len({r.get("model") for r in R}) > 1  # name the model where the search varies it
    for r in R:
        r["model_varies"] = varies
    # a weight-averaged model is a row of its own: on the fronts, not in a trial's epoch-by-epoch quantities
    trials = by_trial([r for r in R if not r.get("averaged")])
    final = [t[-1] for t in trials.values() if t[-1]["status"] == "finished" and t[-1]["schedule_done"]]
    final += [r for r in R if r.get("averaged") and r["status"] == "finished"]
    fi = pareto_front([(r["val_metric"], r["train_flops"]) for r in final])
    ai = pareto_front([(r["val_metric"], r["train_flops"]) for r in R])
    if ref is None:
        ref = (0.0, 1.1 * max(r["train_flops"] for r in R))
    baseline = baseline_reference(trials)
    table = [trial_quantities(trials[r["trial_id"]], baseline) for r in final]
    pts = lambda rs: [(r["val_metric"], r["train_flops"]) for r in rs]  # noqa: E731
    return {
        "final": final,
        "final_front": [final[i] for i in fi],
        "anytime_front": [R[i] for i in ai],
        "baseline": baseline,
        "table": sorted(table, key=lambda q: q["total_flops"]),
        "reference_point": {"val_metric": ref[0], "train_flops": ref[1]},
        # hypervolume in metric x GFLOPs so the numbers read at a glance
        "hypervolume_final": hypervolume_2d(pts(final), ref) / 1e9,
        "hypervolume_anytime": hypervolume_2d(pts(R), ref) / 1e9,
        "counts": {
            s: len({r["trial_id"] for r in every if r["status"] == s}) + (_unreported(rows) if s == "error" else 0)
            for s in STATUSES
        },
    }


def is_learned(r: dict) -> bool:
    """Whether a controller decided the row's phases during training (plateau, probe, population)."""
    return r.get("controller") not in (None, "fixed")


def _label(r: dict) -> str:
    """A row's schedule, with its model where a search varies it, what a learned schedule trained (a fixed
    schedule that re-runs it), and a mark for a weight-averaged model."""
    label = f"{r['model']} {r['schedule']}" if r.get("model") and r.get("model_varies") else r["schedule"]
    if is_learned(r) and r.get("trained"):
        label += f" -> learned {r['trained']}"
    return label + (" (averaged)" if r.get("averaged") else "")


def table_text(res: dict) -> str:
    """Table 2 (budget mode) and Table 3 (convergence mode) for every finished trial, as text."""
    b = res["baseline"]
    name = res["table"][0]["metric_name"] if res["table"] else "metric"
    w = max([36, *(len(q["schedule"]) for q in res["table"])])  # a mixed schedule's text is longer
    head = (
        f"  {'schedule':<{w}} {'trial':<14} {'end ' + name:>12} {'GFLOPs':>9} | {'budget: epoch':>13} {name:>9} "
        f"{'GFLOPs':>9} {'FLOPs saved':>11} {'time saved':>10} | {'best final':>10} {'vs baseline':>11}"
    )
    lines = [head]
    for q in res["table"]:
        if b is None:
            budget = f"{'no baseline':>13} {'':>9} {'':>9} {'':>11} {'':>10}"
        elif q["budget_reached"]:
            budget = (
                f"{q['budget_epoch']:>13.2f} {q['budget_metric']:>9.4f} {q['budget_flops'] / 1e9:>9.4g} "
                f"{pct(q['flops_saving']):>11} {pct(q['time_saving']):>10}"
            )
        else:
            budget = f"{'did not reach':>13} {'':>9} {'':>9} {'':>11} {'':>10}"
        best = f"{q['best_final_metric']:>10.4f}" if q["best_final_metric"] is not None else f"{'':>10}"
        delta = f"{q['convergence_delta']:>+11.4f}" if q["convergence_delta"] is not None else f"{'':>11}"
        lines.append(
            f"  {q['schedule']:<{w}} {q['trial_id']:<14} {q['final_metric']:>12.4f} "
            f"{q['total_flops'] / 1e9:>9.4g} | {budget} | {best} {delta}"
        )
    compiled = sum(q["compile_time_s"] for q in res["table"])
    if compiled:
        lines.append(
            f"  time saved compares training time alone; compiling and warm-up took {compiled:.1f} s more "
            f"in all (compile_time_s), once per phase of each trial"
        )
    return "\n".join(lines)


def front_sentence(res: dict) -> str:
    """One sentence on what the results show, claiming no more than the table does."""
    b, table = res["baseline"], res["table"]
    c2f = [q for q in table if not q["is_baseline"]]
    if b is None:
        return "No baseline trial finished, so no saving can be stated; the front only orders the schedules tried."
    name = b["metric_name"]
    reached = [q for q in c2f if q["budget_reached"]]
    if not reached:
        return (
            f"None of the {len(c2f)} finished coarse-to-fine schedules reached the baseline's best {name} "
            f"({b['val_metric']:.4f}) in its final phase, so this search shows no budget-mode saving."
        )
    top = max(reached, key=lambda q: q["flops_saving"])
    return (
        f"{len(reached)} of {len(c2f)} finished coarse-to-fine schedules reached the baseline's best {name} "
        f"({b['val_metric']:.4f}) in their final phase; the largest budget-mode saving is "
        f"{100 * top['flops_saving']:.1f}% of FLOPs ({top['schedule']}), measured on the validation split "
        f"that also chose it, with one seed."
    )


def _unreported(rows: pa.Table) -> int:
    """Trials that failed before their first report (``load_rows`` counts them in the table's metadata)."""
    meta = rows.schema.metadata or {}
    return int(json.loads(meta.get(b"failed_unreported", b"0")))


def counts_line(res: dict) -> str:
    c = res["counts"]
    return (
        f"trials: {c['finished']} finished, {c['pruned']} pruned/stopped, "
        + (f"{c['running']} running or interrupted (--resume continues them), " if c["running"] else "")
        + f"{c['error']} failed"
    )


def summary_text(res: dict) -> str:
    b = res["baseline"]
    lines = [
        counts_line(res),
        f"reference point: metric {res['reference_point']['val_metric']:g}, "
        f"{res['reference_point']['train_flops'] / 1e9:.4g} GFLOPs",
        f"hypervolume (metric x GFLOPs): final {res['hypervolume_final']:.6g}, "
        f"anytime {res['hypervolume_anytime']:.6g}",
    ]
    if b:
        lines.append(
            f"baseline reference (its best epoch): {b['schedule']} trial {b['trial_id']}, {b['metric_name']} "
            f"{b['val_metric']:.4f} at epoch {b['epoch']:.2f}, {b['train_flops'] / 1e9:.4g} GFLOPs, "
            f"{b['train_time_s']:.1f} s" + (f", test {b['test_metric']:.4f}" if _finite(b.get("test_metric")) else "")
        )
    lines.append(
        "Table 2/3, every finished trial (budget mode: earliest final-phase evaluation at or above the "
        "baseline reference; convergence mode: best final-phase metric minus the baseline's best):"
    )
    lines.append(table_text(res))
    w = max([36, *(len(_label(r)) for r in res["final_front"] + res["anytime_front"])])
    lines.append("final front (each finished schedule at its end; metric up, FLOPs down):")
    for r in sorted(res["final_front"], key=lambda r: r["train_flops"]):
        test = f"  test={r['test_metric']:.4f}" if _finite(r.get("test_metric")) else ""
        label = _label(r)
        lines.append(
            f"  {label:<{w}} {r['metric_name']}={r['val_metric']:.4f}{test}  {r['train_flops'] / 1e9:10.4g} GFLOPs"
        )
    from ..compress import get_method, list_methods

    dropping = ", ".join(n for n in list_methods(compressing_only=True) if get_method(n).drops_tokens)
    lines.append(
        "anytime front (any evaluation; no saving is claimed from it): a checkpoint at C=1 or of a "
        f"token-dropping phase ({dropping}) is a full-resolution model, marked 'full "
        "model'; one of another phase at C>1 expects input compressed by C:"
    )
    for r in sorted(res["anytime_front"], key=lambda r: r["train_flops"]):
        usable = "full model" if r["full_model"] else f"needs input compressed by {r['C']}"
        lines.append(
            f"  {_label(r):<{w}} C={r['C']:<2} phase {r['phase']} epoch {r['epoch']:5.2f}  "
            f"{r['metric_name']}={r['val_metric']:.4f}  {r['train_flops'] / 1e9:10.4g} GFLOPs  {usable}"
        )
    lines.append(front_sentence(res))
    return "\n".join(lines)


def plot(rows: pa.Table, res: dict, path, metric: str = "val") -> Path:
    """Every trial-evaluation, the finished trials, both fronts and the baseline reference. `metric`
    'test' draws the front points' and the reference's test metric (the front is still chosen on val)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = rows.to_pylist()
    name = R[0]["metric_name"]
    key = "test_metric" if metric == "test" else "val_metric"
    g = 1e9
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
    if metric == "val":
        ax.scatter(
            [r["train_flops"] / g for r in R],
            [r["val_metric"] for r in R],
            s=10,
            c="0.75",
            label="every evaluation (anytime)",
            zorder=1,
        )
        fr = sorted(res["anytime_front"], key=lambda r: r["train_flops"])
        ax.step(
            [r["train_flops"] / g for r in fr],
            [r["val_metric"] for r in fr],
            where="post",
            color="0.4",
            ls=":",
            label="anytime front (C varies)",
            zorder=2,
        )
        full = [r for r in fr if r["full_model"]]
        if full:
            ax.scatter(
                [r["train_flops"] / g for r in full],
                [r["val_metric"] for r in full],
                marker="s",
                s=30,
                facecolor="none",
                edgecolor="0.2",
                zorder=2,
                label="anytime front: a full-resolution model (C=1 or token dropping)",
            )
    cmap = plt.get_cmap("tab10")
    for k, m in enumerate(sorted({r["method"] for r in res["final"]})):
        for learned in (False, True):  # learned schedules (a controller chose the phases) as triangles
            pts = [r for r in res["final"] if r["method"] == m and _finite(r.get(key)) and is_learned(r) == learned]
            if pts:
                ax.scatter(
                    [r["train_flops"] / g for r in pts],
                    [r[key] for r in pts],
                    s=44 if learned else 36,
                    color=cmap(k),
                    marker="^" if learned else "o",
                    zorder=3,
                    edgecolor="k",
                    linewidth=0.4,
                    label=f"{m} ({'learned' if learned else 'fixed'}, finished)",
                )
    fr = sorted((r for r in res["final_front"] if _finite(r.get(key))), key=lambda r: r["train_flops"])
    if fr:  # drawn with markers too, so a front of one point shows
        ax.step(
            [r["train_flops"] / g for r in fr],
            [r[key] for r in fr],
            where="post",
            color="C3",
            lw=2,
            marker="o",
            mfc="none",
            ms=11,
            zorder=4,
            label=f"final front ({len(fr)} point{'s' * (len(fr) > 1)})",
        )
    b = res["baseline"]
    if b and _finite(b.get(key)):
        ax.axhline(b[key], color="k", ls="--", lw=0.8)
        ax.scatter(
            [b["train_flops"] / g],
            [b[key]],
            marker="*",
            s=240,
            color="gold",
            edgecolor="k",
            zorder=5,
            label=f"baseline reference: {b['schedule']} at its best epoch ({b['epoch']:.2f})",
        )
        ax.annotate(
            "baseline best epoch",
            (b["train_flops"] / g, b[key]),
            textcoords="offset points",
            xytext=(-8, -16),
            ha="right",
            fontsize=8,
        )
    ax.set_xlabel("training GFLOPs (cumulative)")
    ax.set_ylabel(f"{'test' if metric == 'test' else 'validation'} {name}")
    ax.set_title(plot_title(res, fr, metric, name))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside the data
    fig.tight_layout()
    return save_figure(fig, path)


def plot_title(res: dict, front: list[dict], metric: str, name: str) -> str:
    """The plot's title: on the test split, the hypervolume of the final front's points at their test metric
    (against the same reference), not the validation one."""
    ref, g = res["reference_point"], 1e9
    if metric == "test":
        pts = [(r["test_metric"], r["train_flops"]) for r in front]
        value = hypervolume_2d(pts, (ref["val_metric"], ref["train_flops"])) / g
        hv = f"hypervolume of the final front's points on test = {value:.4g}"
    else:
        hv = f"hypervolume (final, validation) = {res['hypervolume_final']:.4g}"
    return (
        f"Coarse-to-fine schedules: {name} vs training compute"
        + (" (test split; fronts chosen on validation)" if metric == "test" else "")
        + f"\n{hv} vs ref ({ref['val_metric']:g}, {ref['train_flops'] / g:.4g} GFLOPs)"
    )


def save_figure(fig, path):
    """Write a figure to a file (atomically, format by suffix) or to a binary buffer (PNG), and close it."""
    import matplotlib.pyplot as plt

    if isinstance(path, (str, Path)):
        path = Path(path)
        atomic_write(path, lambda p: fig.savefig(p, format=path.suffix.lstrip(".") or "png", bbox_inches="tight"))
    else:
        fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def front_table(res: dict) -> pa.Table:
    """The fronts as one table: ROW_SCHEMA's columns plus ``front`` (final or anytime)."""
    rows = [dict(r, front="final") for r in res["final_front"]] + [
        dict(r, front="anytime") for r in res["anytime_front"]
    ]
    t = row_table(rows)
    return t.append_column("front", pa.array([r["front"] for r in rows], pa.string()))


def export(
    search_dir, out=None, plot_path=None, ref=None, rows_path=None, filesystem=None, metric="val", device="cpu"
) -> dict:
    """Write the fronts, every row, the Table 2/3 table and the plot; evaluate the final front and the
    baseline reference on the --test split when the search has one. Returns the analysis."""
    rows = load_rows(search_dir, filesystem)
    res = analyse(rows, ref)
    tests = test_metrics(search_dir, res, filesystem, device)
    if tests:
        for r in res["final_front"] + res["final"] + ([res["baseline"]] if res["baseline"] else []):
            r["test_metric"] = tests.get((r["trial_id"], r["step"]))
        rows = row_table([dict(r, test_metric=tests.get((r["trial_id"], r["step"]))) for r in rows.to_pylist()])
    if metric == "test" and not tests:
        raise C2FError(f"{search_dir}: the search has no --test split; plot the validation metric")
    folder = SearchDir(search_dir)
    rows_path = Path(rows_path or folder.trials)
    write_table(rows, rows_path)
    write_table(
        pa.Table.from_pylist(res["table"]) if res["table"] else pa.table({}), rows_path.with_name(folder.table.name)
    )
    if out:
        write_table(front_table(res), out)
    if plot_path:
        plot(rows, res, plot_path, metric)
    return res


def test_metrics(search_dir, res: dict, filesystem=None, device="cpu") -> dict:
    """{(trial_id, step): test metric} of the final-front points and the baseline reference, evaluated
    from their checkpoints on the search's --test split (none: {}). Kept in DIR/test_metrics.parquet so
    a second export evaluates nothing again."""
    import pyarrow.parquet as pq

    settings = search_settings(search_dir)
    if not (settings and settings.test):
        return {}
    cache = SearchDir(search_dir).test_metrics
    known = (
        {(r["trial_id"], r["step"]): r["test_metric"] for r in pq.read_table(cache).to_pylist()}
        if cache.is_file()
        else {}
    )
    want = res["final_front"] + ([res["baseline"]] if res["baseline"] else [])
    todo = [r for r in want if (r["trial_id"], r["step"]) not in known]
    if todo:
        from ..train.evaluator import evaluate_state, read_state

        data = settings.data.load(test=settings.test)
        fs, _ = experiment_location(search_dir, filesystem)
        for r in todo:
            if not r["checkpoint_path"]:
                raise NoResults(
                    f"{r['trial_id']} step {r['step']}: its checkpoint was not kept, so it cannot be "
                    f"evaluated on the test split"
                )
            try:
                state = read_state(fs, r["checkpoint_path"])
            except FileNotFoundError:
                imported = r.get("warm_start")
                raise NoResults(
                    f"{r['trial_id']} step {r['step']}: its checkpoint {r['checkpoint_path']} is gone, so it cannot "
                    f"be evaluated on the test split; "
                    + (
                        f"the trial was imported by --warm-start from {imported}: put that folder back there"
                        if imported
                        else "restore the search folder's checkpoints"
                    )
                ) from None
            known[(r["trial_id"], r["step"])] = evaluate_state(state, data, "test", device)
        write_table(
            pa.Table.from_pylist([{"trial_id": k[0], "step": k[1], "test_metric": v} for k, v in known.items()]), cache
        )
    return known
