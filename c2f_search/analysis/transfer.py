"""Proxy -> target: ``confirm --target``'s analysis. Each confirmed schedule's savings on the proxy (the
search's setting) next to those at the target, each side against its own baseline at the same seed; the
rank correlation of the two orders; what the search cost and when it pays for itself. Pure analysis, no Ray."""

from __future__ import annotations

from pathlib import Path

from .formatting import format_mean_sd
from .pareto import save_figure
from .seeds import SUMMARIZED, schedule_key

SIDE_KEYS = (
    "schedule",
    "is_baseline",
    "seeds",
    "finished",
    "reached",
    "holds_every_seed",
    *(f"{k}_{s}" for k in SUMMARIZED for s in ("mean", "sd")),
)


def transfer_rows(proxy: list[dict], target: list[dict]) -> list[dict]:
    """One row per confirmed schedule and form: its proxy summary (``analyse_seeds``) next to its target
    summary, paired by the search trial it comes from; in the target's order (the baseline first)."""
    by = {schedule_key(r): r for r in proxy}
    return [
        {
            "source_trial": t["source_trial"],
            "form": t.get("form"),
            "metric_name": t["metric_name"],
            **{f"proxy_{k}": by.get(schedule_key(t), {}).get(k) for k in SIDE_KEYS},
            **{f"target_{k}": t.get(k) for k in SIDE_KEYS},
            **{f"target_{k}": t[k] for k in ("test_metric_mean", "test_metric_sd") if k in t},
        }
        for t in target
    ]


def rank_correlation(xs: list, ys: list) -> float | None:
    """Kendall's tau-b between two orderings of the same items (ties allowed, torchmetrics); None where it
    is undefined: fewer than 2 items, or every item tied on one side."""
    if len(xs) < 2:
        return None
    import torch
    from torchmetrics.functional.regression import kendall_rank_corrcoef

    tau = float(
        kendall_rank_corrcoef(torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64), variant="b")
    )
    return None if tau != tau else tau


def _ranks(keys: list) -> list[int]:
    """Dense ranks (equal keys share one), so that tuples can be ordered by Kendall's tau."""
    order = sorted(set(keys))
    return [order.index(k) for k in keys]


def _order_key(r: dict, side: str, by: str) -> tuple:
    """By saving: the share of seeds that reached the same-seed baseline's best, then the mean saving over
    those seeds (a schedule that never reached it ranks below every one that did). By metric: the mean best
    final-phase metric."""
    low = float("-inf")
    if by == "saving":
        mean = r[f"{side}_flops_saving_mean"]
        return (r[f"{side}_reached"] / r[f"{side}_seeds"] if r[f"{side}_seeds"] else 0.0, low if mean is None else mean)
    mean = r[f"{side}_best_final_metric_mean"]
    return (low if mean is None else mean,)


def rank_agreement(rows: list[dict]) -> dict:
    """Kendall's tau between the proxy's and the target's orders of the coarse-to-fine rows, by saving and
    by final metric, and how many schedules it is over (None: undefined)."""
    c2f = [r for r in rows if not r["target_is_baseline"]]
    out = {"schedules": len(c2f)}
    for by in ("saving", "metric"):
        out[f"tau_{by}"] = rank_correlation(
            _ranks([_order_key(r, "proxy", by) for r in c2f]), _ranks([_order_key(r, "target", by) for r in c2f])
        )
    return out


def _pm(m, s, k=100, p=1, unit="%", sign="+") -> str:
    return format_mean_sd(m, s, k, p, unit, sign)


def tau_text(t) -> str:
    return "undefined" if t is None else f"{t:+.2f}"


def form_label(r: dict) -> str:
    """fixed (a fixed schedule), controller (a learned schedule's controller re-run), exported (the fixed
    schedule a learned run trained, re-run as such)."""
    return r.get("form") or "fixed"


def cost_numbers(
    rows: list[dict], search_flops: float, search_trials: int, target_flops: float, proxy_flops: float
) -> dict:
    """What the search and this confirmation cost, what the chosen schedule (the search's top pick: the first
    coarse-to-fine row) saves per target training in budget mode, and after how many target trainings the
    search has paid for itself (None: it does not, on this evidence)."""
    import math

    c2f = [r for r in rows if not r["target_is_baseline"]]
    chosen = c2f[0] if c2f else None
    saved = chosen["target_flops_saved_mean"] if chosen and chosen["target_holds_every_seed"] else None
    pays = saved is not None and saved > 0
    holding = [r for r in c2f if r["target_holds_every_seed"] and (r["target_flops_saved_mean"] or 0) > 0]
    best = max(holding, key=lambda r: r["target_flops_saved_mean"]) if holding else None
    return {
        "best_holding": None
        if best is None or best is chosen
        else {
            "schedule": best["target_schedule"],
            "form": form_label(best),
            "saved": best["target_flops_saved_mean"],
            "break_even": math.ceil(search_flops / best["target_flops_saved_mean"]),
        },
        "search_flops": search_flops,
        "search_trials": search_trials,
        "target_flops": target_flops,
        "proxy_flops": proxy_flops,
        "chosen": chosen["target_schedule"] if chosen else None,
        "chosen_form": form_label(chosen) if chosen else None,
        "chosen_saved_flops": chosen["target_flops_saved_mean"] if chosen else None,
        "chosen_holds": bool(chosen and chosen["target_holds_every_seed"]),
        "break_even": math.ceil(search_flops / saved) if pays else None,
        "break_even_with_confirm": math.ceil((search_flops + target_flops + proxy_flops) / saved) if pays else None,
    }


def cost_text(c: dict) -> str:
    T = 1e12
    head = (
        f"cost: the proxy search trained {c['search_trials']} trials for {c['search_flops'] / T:.4g} TFLOPs; this "
        f"confirmation {c['target_flops'] / T:.4g} TFLOPs at the target and {c['proxy_flops'] / T:.4g} TFLOPs of "
        f"proxy seeds"
    )
    if c["chosen"] is None:
        return head + "; no coarse-to-fine schedule was confirmed, so nothing is saved"
    saved = c["chosen_saved_flops"]
    what = f"the search's top pick, {c['chosen']} ({c['chosen_form']})"
    if c["break_even"] is None:
        b = c.get("best_holding")
        other = (
            ""
            if b is None
            else f"; another confirmed schedule, {b['schedule']} ({b['form']}), kept its saving at "
            f"every seed ({b['saved'] / T:.4g} TFLOPs per target training, paying for the search after "
            f"{b['break_even']} target trainings)"
        )
        return (
            head + f"; {what} did not keep a budget-mode saving at every seed against the same-seed target "
            "baseline"
            + (
                ""
                if saved is None
                else f" (mean {saved / T:+.4g} TFLOPs per training over the seeds that reached the baseline's best)"
            )
            + ", so on this evidence the top pick does not pay for itself at the target"
            + other
        )
    return (
        head + f"; {what} saves {saved / 1e12:.4g} TFLOPs per target training in budget mode (mean over seeds, "
        f"against the same-seed target baseline), so the search pays for itself after {c['break_even']} target "
        f"trainings ({c['break_even_with_confirm']} counting this confirmation)"
    )


def transfer_sentence(rows: list[dict], ranks: dict) -> str:
    """One sentence that claims no more than the transfer table shows."""
    c2f = [r for r in rows if not r["target_is_baseline"]]
    if not c2f:
        return "Only the baseline was confirmed, so no saving can carry over."
    held = [r for r in c2f if r["target_holds_every_seed"]]
    top = c2f[0]
    proxy = (
        "did not reach the proxy baseline's best at any seed"
        if not top["proxy_reached"]
        else f"saved {_pm(top['proxy_flops_saving_mean'], top['proxy_flops_saving_sd'])} on the proxy "
        f"({top['proxy_reached']}/{top['proxy_seeds']} seeds reached)"
    )
    target = (
        "did not reach the target baseline's best at any seed"
        if not top["target_reached"]
        else f"saved {_pm(top['target_flops_saving_mean'], top['target_flops_saving_sd'])} at the target "
        f"({top['target_reached']}/{top['target_seeds']} seeds reached)"
    )
    few = " (too few schedules for the order to say much)" if ranks["schedules"] < 5 else ""
    s = (
        f"At the target {len(held)} of {len(c2f)} confirmed schedules kept a budget-mode saving at every seed "
        f"against the target's own baseline at the same seed; the search's top pick {proxy} and {target}; Kendall's "
        f"tau between the proxy's and the target's orders is {tau_text(ranks['tau_saving'])} by saving and "
        f"{tau_text(ranks['tau_metric'])} by final metric over {ranks['schedules']} schedules{few}."
    )
    if not held:
        s += " On this evidence the proxy's savings do not carry over to this target."
    return s


def holds_cell(r: dict, side: str) -> str:
    """A 'holds' cell: 'ref' on the baseline's row, the reference each saving is measured against."""
    return "ref" if r.get(f"{side}_is_baseline") else "yes" if r[f"{side}_holds_every_seed"] else "no"


def transfer_text(rows: list[dict], ranks: dict, cost: dict, header: list[str]) -> str:
    name = rows[0]["metric_name"] if rows else "metric"
    lines = list(header)
    lines.append(
        f"  {'form':<10} {'schedule at the proxy -> at the target':<50} | {'proxy: FLOPs saved':>18} "
        f"{'vs baseline ' + name:>22} {'holds':>5} {'reached':>7} | {'target: FLOPs saved':>19} "
        f"{'vs baseline ' + name:>22} {'holds':>5} {'reached':>7}"
    )
    for r in rows:
        label = f"{r['proxy_schedule']} -> {r['target_schedule']}"
        lines.append(
            f"  {form_label(r):<10} {label:<50} | "
            f"{_pm(r['proxy_flops_saving_mean'], r['proxy_flops_saving_sd']):>18} "
            f"{_pm(r['proxy_convergence_delta_mean'], r['proxy_convergence_delta_sd'], 1, 4, ''):>22} "
            f"{holds_cell(r, 'proxy'):>5} "
            f"{r['proxy_reached']:>3}/{r['proxy_seeds']:<3} | "
            f"{_pm(r['target_flops_saving_mean'], r['target_flops_saving_sd']):>19} "
            f"{_pm(r['target_convergence_delta_mean'], r['target_convergence_delta_sd'], 1, 4, ''):>22} "
            f"{holds_cell(r, 'target'):>5} "
            f"{r['target_reached']:>3}/{r['target_seeds']:<3}"
            + (
                f" test {name} {_pm(r['target_test_metric_mean'], r['target_test_metric_sd'], 1, 4, '', '')}"
                if "target_test_metric_mean" in r
                else ""
            )
        )
    lines.append(
        f"rank correlation (Kendall's tau-b, proxy order against target order, {ranks['schedules']} "
        f"coarse-to-fine schedules): by saving {tau_text(ranks['tau_saving'])}, by final metric "
        f"{tau_text(ranks['tau_metric'])}"
    )
    lines.append(cost_text(cost))
    lines.append(transfer_sentence(rows, ranks))
    return "\n".join(lines)


def plot_transfer(proxy_seeds: list[dict], target_seeds: list[dict], rows: list[dict], path) -> Path:
    """Per schedule (and form): the budget-mode saving (left) and the convergence delta (right) on the proxy
    and at the target, mean ± sd over seeds as bars, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=110)
    labels = [f"{r['proxy_schedule']}\n({form_label(r)})" for r in rows]
    for ax, key, k, title in (
        (axes[0], "flops_saving", 100, "budget-mode FLOPs saving vs same-seed baseline (%)"),
        (
            axes[1],
            "convergence_delta",
            1,
            f"best final {rows[0]['metric_name'] if rows else ''} minus same-seed baseline's best",
        ),
    ):
        for j, (side, seeds, color) in enumerate((("proxy", proxy_seeds, "C0"), ("target", target_seeds, "C1"))):
            x = [i + (j - 0.5) * 0.38 for i in range(len(rows))]
            ax.bar(
                x,
                [k * (r[f"{side}_{key}_mean"] or 0) for r in rows],
                width=0.36,
                color=color,
                alpha=0.6,
                yerr=[k * (r[f"{side}_{key}_sd"] or 0) for r in rows],
                capsize=3,
                label=side,
            )
            for xi, r in zip(x, rows):
                pts = [k * q[key] for q in seeds if schedule_key(q) == schedule_key(r) and q[key] is not None]
                ax.scatter([xi] * len(pts), pts, color="k", s=10, zorder=3)
                if key == "flops_saving":  # the saving is over the seeds that reached the baseline's best
                    ax.annotate(
                        f"{r[f'{side}_reached']}/{r[f'{side}_seeds']}",
                        (xi, 0),
                        textcoords="offset points",
                        xytext=(0, -10),
                        ha="center",
                        fontsize=6,
                    )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(
        "proxy -> target: each schedule's saving and metric, paired with the baseline at the same seed "
        "(under the bars: seeds that reached the baseline's best)"
    )
    fig.tight_layout()
    return save_figure(fig, path)
