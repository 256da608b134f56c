"""``report``: one self-contained HTML page of a search (plots embedded as data URIs, no scripts, no
server): the front, every trial's learning curve coloured by C, the Table 2/3 tables, the seeds, the settings."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import C2FError
from ..files import atomic_write
from ..layout import SearchDir
from .formatting import pct
from .pareto import analyse, counts_line, front_sentence, plot, save_figure, test_metrics
from .rows import by_trial, load_rows, search_settings
from .seeds import holds_text


def _png(draw) -> str:
    buf = io.BytesIO()
    draw(buf)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def plot_curves(rows: list[dict], baseline: dict | None, path):
    """Every trial's validation metric against epochs and against GFLOPs; each segment coloured by the
    C it trained at, each phase transition marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Cs = sorted({r["C"] for r in rows})
    color = {C: plt.get_cmap("plasma")(0.8 * k / max(1, len(Cs) - 1)) for k, C in enumerate(Cs)}  # no pale yellow
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=110, sharey=True)
    for ax, x, label in ((axes[0], "epoch", "epochs"), (axes[1], "train_flops", "training GFLOPs (cumulative)")):
        k = 1e9 if x == "train_flops" else 1
        for t in by_trial(rows).values():
            for a, b in zip(t, t[1:]):
                ax.plot([a[x] / k, b[x] / k], [a["val_metric"], b["val_metric"]], color=color[b["C"]], lw=1, alpha=0.8)
            ends = [r for r in t if r["phase_end"] and not r["schedule_done"]]
            ax.scatter(
                [r[x] / k for r in ends], [r["val_metric"] for r in ends], marker="|", s=120, color="C3", zorder=3
            )
        if baseline:
            ax.axhline(baseline["val_metric"], color="k", ls="--", lw=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation {rows[0]['metric_name']}")
    handles = [matplotlib.lines.Line2D([], [], color=color[C], label=f"C={C}") for C in Cs]
    handles.append(matplotlib.lines.Line2D([], [], color="C3", marker="|", ls="", ms=12, label="phase transition"))
    if baseline:
        handles.append(matplotlib.lines.Line2D([], [], color="k", ls="--", label="baseline best (reference)"))
    axes[1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("learning curves of every trial")
    fig.tight_layout()
    return save_figure(fig, path)


def _table(records: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, heading, format) with format '' for text, 'pct' for a fraction as %, or a format spec."""

    def cell(v, f):
        if v is None or v != v:
            return ""
        if not f or not isinstance(v, int | float):  # text, or what a damaged file holds instead of a number
            return html.escape(str(v))
        return pct(v) if f == "pct" else format(v, f)

    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(k), f)}</td>" for k, _, f in columns) + "</tr>" for r in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_table(path: Path, d: Path, again: str):
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise C2FError(
            f"{path}: cannot be read ({str(e).splitlines()[0]}); run 'c2f-search confirm {d}{again} "
            f"--overwrite' again, or remove the file"
        ) from None


def _target_dirs(d: Path) -> list:
    """The folders of the targets confirmed (each marked by its target file)."""
    folder = SearchDir(d)
    return sorted(
        (folder.target(p.name) for p in folder.confirm_dir.glob("*") if folder.target(p.name).marker.is_file()),
        key=lambda t: t.path,
    )


def _interrupted(state: Path) -> bool:
    """A confirm that was stopped before it finished (its plan says so): it wrote no result."""
    try:
        return state.is_file() and json.loads(state.read_text()).get("finished") is False
    except (OSError, ValueError, AttributeError):
        return False


def _interrupted_note(what: str, args: str) -> str:
    return (
        f"<h2>{html.escape(what)}: interrupted, partial</h2><p>It was stopped before it finished and wrote no "
        f"result; continue it with <code>c2f-search confirm {html.escape(args)} --resume</code>.</p>"
    )


def _targets(d: Path, name: str) -> list[str]:
    """A section per confirmed target (DIR/confirm/NAME): the transfer table, the rank correlation, the cost
    line and the sentence, and the plot."""
    from .transfer import cost_text, holds_cell, tau_text, transfer_sentence

    SIDES = ("proxy", "target")

    esc, parts = html.escape, []
    for target in _target_dirs(d):
        folder, f = target.path, target.table
        if _interrupted(target.marker):
            parts.append(_interrupted_note(f"confirm --target {folder.name}", f"{d} --target {folder.name}"))
            continue
        if not f.is_file():
            continue
        again = f" --target {folder.name}"
        table = _read_table(f, d, again)
        rows = table.to_pylist()
        try:
            meta = {k.decode(): json.loads(v) for k, v in (table.schema.metadata or {}).items()}
            lines = [*meta["header"], cost_text(meta["cost"]), transfer_sentence(rows, meta["rank_correlation"])]
            tau = meta["rank_correlation"]
            tau_line = (
                f"Kendall's tau (proxy order against target order, {tau['schedules']} schedules): by saving "
                f"{tau_text(tau['tau_saving'])}, by final metric {tau_text(tau['tau_metric'])}."
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise C2FError(
                f"{f}: cannot be read (its transfer summary: {e!r}); run 'c2f-search confirm {d}{again} "
                f"--overwrite' again, or remove the file"
            ) from None
        cols = [
            ("proxy_schedule", "schedule at the proxy", ""),
            ("target_schedule", "at the target", ""),
            ("form", "form", ""),
            ("proxy_flops_saving_mean", "proxy: FLOPs saved", "pct"),
            ("proxy_flops_saving_sd", "sd", "pct"),
            ("proxy_convergence_delta_mean", f"vs baseline {name}", "+.4f"),
            ("proxy_holds_every_seed", "holds", ""),
            ("target_flops_saving_mean", "target: FLOPs saved", "pct"),
            ("target_flops_saving_sd", "sd", "pct"),
            ("target_convergence_delta_mean", f"vs baseline {name}", "+.4f"),
            ("target_holds_every_seed", "holds", ""),
            ("target_reached", "reached", "d"),
            ("target_seeds", "seeds", "d"),
        ]
        if rows and "target_test_metric_mean" in rows[0]:
            cols.append(("target_test_metric_mean", f"target: test {name}", ".4f"))
        parts += [
            f"<h2>Transfer to target {esc(folder.name)} (confirm --target)</h2>",
            *(f"<p>{esc(str(x))}</p>" for x in lines[:-2]),
            _table([{**r, **{f"{s}_holds_every_seed": holds_cell(r, s) for s in SIDES}} for r in rows], cols),
            f"<p>{esc(tau_line)}</p>",
            *(f"<p>{esc(x)}</p>" for x in lines[-2:]),
        ]
        if target.plot.is_file():
            parts.append(
                f'<img alt="transfer" src="data:image/png;base64,'
                f'{base64.b64encode(target.plot.read_bytes()).decode()}">'
            )
    return parts


def write_report(search_dir, path=None) -> Path:
    d = Path(search_dir)
    rows = load_rows(d)
    res = analyse(rows)
    tests = test_metrics(d, res)
    for r in res["final_front"] + ([res["baseline"]] if res["baseline"] else []):
        r["test_metric"] = tests.get((r["trial_id"], r["step"]))
    R = rows.to_pylist()
    name = R[0]["metric_name"]
    b = res["baseline"]
    for q in res["table"]:
        q["budget"] = "no baseline" if b is None else "reached" if q["budget_reached"] else "did not reach"
        q["gflops"], q["budget_gflops"] = q["total_flops"] / 1e9, q["budget_flops"] and q["budget_flops"] / 1e9
    for r in res["final_front"]:
        r["gflops"] = r["train_flops"] / 1e9
    esc = html.escape  # every text from a file: trial folders may come from anyone who shares the search
    parts = [
        f"<h1>c2f-search: {esc(str(d.resolve()))}</h1>",
        f"<p>{esc(counts_line(res))}</p>",
        f"<p>{esc(front_sentence(res))}</p>",
    ]
    if b:
        parts.append(
            f"<p>Baseline reference (its best epoch): {esc(b['schedule'])}, trial {esc(b['trial_id'])}, "
            f"{esc(name)} {b['val_metric']:.4f} at epoch {b['epoch']:.2f}, {b['train_flops'] / 1e9:.4g} "
            f"GFLOPs.</p>"
        )
    parts += ["<h2>Pareto front</h2>", _png(lambda f: plot(rows, res, f))]
    if tests:
        parts.append(_png(lambda f: plot(rows, res, f, metric="test")))
    parts += [
        "<h2>Learning curves</h2>",
        _png(lambda f: plot_curves(R, b, f)),
        "<h2>Table 2/3: every finished trial</h2>",
        "<p>Budget mode (Table 2): the earliest evaluation of a schedule's final phase at or above the baseline "
        "reference; its FLOPs and time saving against the reference. Convergence mode (Table 3): the best "
        "final-phase metric minus the baseline's best. Definitions: docs/results.md.</p>",
        _table(
            res["table"],
            [
                ("schedule", "schedule", ""),
                ("trial_id", "trial", ""),
                ("final_metric", f"end {name}", ".4f"),
                ("gflops", "GFLOPs", ".4g"),
                ("budget", "budget mode", ""),
                ("budget_epoch", "epoch", ".2f"),
                ("budget_metric", name, ".4f"),
                ("budget_gflops", "GFLOPs", ".4g"),
                ("flops_saving", "FLOPs saved", "pct"),
                ("time_saving", "time saved", "pct"),
                ("best_final_metric", f"best final {name}", ".4f"),
                ("convergence_delta", "vs baseline best", "+.4f"),
            ],
        ),
        "<h2>Final front</h2>",
        _table(
            sorted(res["final_front"], key=lambda r: r["train_flops"]),
            [
                ("schedule", "schedule", ""),
                ("trial_id", "trial", ""),
                ("val_metric", f"val {name}", ".4f"),
                ("test_metric", f"test {name}", ".4f"),
                ("gflops", "GFLOPs", ".4g"),
            ],
        ),
    ]
    confirm = SearchDir(d).confirm
    if _interrupted(SearchDir(d).confirm_state):
        parts.append(_interrupted_note("confirm", str(d)))
    elif confirm.table.is_file():
        seeds = [{**r, "holds_every_seed": holds_text(r)} for r in _read_table(confirm.table, d, "").to_pylist()]
        parts += [
            "<h2>Seeds (confirm)</h2>",
            _table(
                seeds,
                [
                    ("schedule", "schedule", ""),
                    ("seeds", "seeds", "d"),
                    ("best_final_metric_mean", f"best final {name}", ".4f"),
                    ("best_final_metric_sd", "sd", ".4f"),
                    ("reached", "reached", "d"),
                    ("flops_saving_mean", "FLOPs saved", "pct"),
                    ("flops_saving_sd", "sd", "pct"),
                    ("holds_every_seed", "holds at every seed", ""),
                ],
            ),
        ]
        if confirm.plot.is_file():
            parts.append(
                f'<img alt="confirm" src="data:image/png;base64,'
                f'{base64.b64encode(confirm.plot.read_bytes()).decode()}">'
            )
    parts += _targets(d, name)
    settings = search_settings(d)
    if settings:
        parts += [
            "<h2>Search settings</h2>",
            f"<pre>{html.escape(json.dumps(asdict(settings), indent=1), quote=False)}</pre>",
        ]
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>c2f-search report</title><style>"
        "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:1em}"
        "</style></head><body>" + "\n".join(parts) + "</body></html>"
    )
    return atomic_write(Path(path) if path else SearchDir(d).report, page)
