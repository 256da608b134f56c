"""``export``: one finished trial of a search folder as a schedule file for another training loop
(``schedule_file.py``; docs/own_loop.md). A learned schedule exports the fixed form it trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import C2FError
from ..layout import SearchDir
from .args import out_path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a search's schedule as a file for your own training loop (docs/own_loop.md)",
        description="Write one finished trial's schedule, per-phase features and geometry, hyperparameters, "
        "saving and metric to a JSON or YAML file that c2f_search.CoarseToFine and the Lightning callback read.",
    )
    p.add_argument("dir", metavar="DIR", help="the --out folder of a search")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", metavar="ID", help="this trial (its id, as the report and trials.parquet name it)")
    which.add_argument("--best", action="store_true", help="the finished trial with the best final metric")
    which.add_argument(
        "--saving-at-least",
        metavar="P",
        type=_fraction,
        help="the best final metric among trials that saved at least P of the baseline's FLOPs in budget mode "
        "(0.3 or 30%%)",
    )
    p.add_argument("--out", type=out_path, default=None, help="a .json, .yaml or .yml file (default DIR/schedule.json)")
    p.set_defaults(fn=cmd_export)


def _fraction(text: str) -> float:
    import argparse

    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction such as 0.3 or 30%") from None
    if not (math.isfinite(v) and 0 < v < 1):
        raise argparse.ArgumentTypeError(f"{text!r}: a saving is between 0 and 1 (or 0% and 100%)")
    return v


def cmd_export(a) -> int:
    from ..analysis.pareto import analyse, is_learned
    from ..analysis.rows import by_trial, load_rows, search_settings
    from ..config import defaults
    from ..files import atomic_write, check_writable
    from ..schedule import parse_schedule, record_schedule
    from ..schedule_file import SUFFIXES, ScheduleFile, dump_schedule_file

    folder = SearchDir(a.dir)
    out = Path(a.out or folder.path / "schedule.json")
    if out.suffix not in SUFFIXES:
        raise C2FError(f"--out {out}: use a file name ending in {', '.join(SUFFIXES)}")
    settings = search_settings(folder.path)
    if settings is None:
        raise C2FError(f"{folder.path}: not a search folder (no {folder.settings.name}); give a search's --out")
    rows = load_rows(folder.path)
    res = analyse(rows)
    last = _choose(a, res, by_trial(rows.to_pylist()))
    q = next((q for q in res["table"] if q["trial_id"] == last["trial_id"]), {})
    # a learned schedule's phases were decided on the way: what it trained is the fixed schedule that repeats it
    schedule = parse_schedule(last["trained"]) if is_learned(last) else record_schedule(last["schedule"])
    config = json.loads(last["config"]) if last["config"] else {}
    f = ScheduleFile(
        schedule,
        round(last["step"] / last["epoch"]),
        _full_geometry(settings),
        last["model"] or config.get("model") or defaults()["model"],  # rows before 0.2 did not name it
        dict(settings.model_kwargs),
        10.0,
        _hyperparameters(settings, last, config),
        {
            "search": str(folder.path.resolve()),
            "trial_id": last["trial_id"],
            "searched_schedule": last["schedule"],
            "checkpoint": last["checkpoint_path"],
            "data": settings.flags.get("data") or settings.data.train,
            "metric_name": last["metric_name"],
            "metric": last["val_metric"],
            "train_flops": last["train_flops"],
            "flops_saving": q.get("flops_saving"),  # budget mode, against the best baseline; None: not reached
            "baseline_metric": res["baseline"]["val_metric"] if res["baseline"] else None,
        },
    )
    check_writable(out)
    atomic_write(out, dump_schedule_file(f, out))
    saving = q.get("flops_saving")
    print(
        f"exported trial {last['trial_id']}: {schedule} ({last['metric_name']} {last['val_metric']:.4f}"
        + (f", {100 * saving:.1f}% fewer FLOPs than the baseline" if saving is not None else "")
        + f") -> {out}"
    )
    print("use it in your own loop (docs/own_loop.md):")
    print("    from c2f_search import CoarseToFine")
    print(f"    c2f = CoarseToFine({str(out)!r}, model, steps_per_epoch={f.steps_per_epoch})")
    print("    step = c2f.step()  # each step: step.transform(x, n_frames), step.keep_index(B, device), step.model")
    return 0


def _choose(a, res: dict, trials: dict) -> dict:
    """The last row of the trial `a` asks for."""
    finished = {r["trial_id"]: r for r in res["final"] if not r.get("averaged")}
    if not finished:
        raise C2FError(f"{a.dir}: no trial has finished yet; wait for the search, or --resume it")
    if a.trial is not None:
        if a.trial not in trials:
            raise C2FError(f"--trial {a.trial}: no such trial in {a.dir}; its trials: {', '.join(sorted(trials))}")
        if a.trial not in finished:
            raise C2FError(
                f"--trial {a.trial}: did not finish its schedule (status {trials[a.trial][-1]['status']}); "
                f"finished trials: {', '.join(sorted(finished))}"
            )
        return finished[a.trial]
    pool = list(finished.values())
    if a.saving_at_least is not None:
        savings = {q["trial_id"]: q["flops_saving"] for q in res["table"] if q["flops_saving"] is not None}
        pool = [r for r in pool if savings.get(r["trial_id"], -math.inf) >= a.saving_at_least]
        if not pool:
            top = max(savings.values(), default=None)
            raise C2FError(
                f"--saving-at-least {a.saving_at_least:g}: no finished trial saved that much while reaching the "
                f"baseline's metric; "
                + (f"the largest saving is {top:.3f}" if top is not None else "none reached the baseline")
            )
    return max(pool, key=lambda r: (r["val_metric"], -r["train_flops"]))


def _full_geometry(settings):
    from ..data.sets import default_frontend
    from ..geometry import Geometry

    d = settings.data
    fe = default_frontend(settings.flags.get("data") or d.train or "")
    return Geometry(d.num_mel_bins or fe.num_mel_bins, d.target_length or fe.target_length)


def _hyperparameters(settings, last: dict, config: dict) -> dict:
    """What the trial trained with: the space's fixed settings (where its file is still there), then those the
    search sampled."""
    from ..config import SEARCHABLE

    fixed = {}
    if Path(settings.space).is_file():
        import yaml

        fixed = (yaml.safe_load(Path(settings.space).read_text()) or {}).get("fixed") or {}
    sampled = {k: v for k, v in config.items() if k in SEARCHABLE}
    row = {k: last[k] for k in ("lr", "batch_size", "seed") if last.get(k) is not None}
    return {**fixed, **sampled, **row}
