"""``confirm``: re-run the baseline and the top front schedules with new seeds, in parallel, as one
Ray Tune run (DIR/confirm), and say which savings hold at every seed (``c2f_search.seeds``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import C2FError
from ..io import atomic_write
from ..pareto import analyse, load_rows
from ..results import write_table
from ..schedule import record_schedule as parse_schedule
from ..seeds import analyse_seeds, plot_seeds, summary_text
from ..spaces import load_space
from .runner import connect_ray, make_trainable, trial_resources
from .settings import SearchSettings

EXPERIMENT = "confirm"


def pick(res: dict, top: int) -> list[dict]:
    """The baseline reference's trial, then the `top` final-front schedules with the largest budget-mode
    saving (those that did not reach the baseline follow, by metric)."""
    if res["baseline"] is None:
        raise C2FError("confirm needs a finished baseline trial (none:1xE) in the search; run one first")
    q = {x["trial_id"]: x for x in res["table"]}
    front = [r for r in res["final_front"] if not parse_schedule(r["schedule"]).is_baseline]
    front.sort(key=lambda r: (q[r["trial_id"]]["flops_saving"] is None, -(q[r["trial_id"]]["flops_saving"] or 0),
                              -r["val_metric"]))
    base = next(t for t in res["final"] if t["trial_id"] == res["baseline"]["trial_id"])
    return [base] + front[:top]


def run_confirm(out, top: int, seeds: int, overwrite: bool = False, address=None, progress_stream=None) -> str:
    """Run the seeds and write DIR/confirm.parquet (per schedule), DIR/confirm_seeds.parquet (per seed),
    DIR/confirm.png and DIR/confirm.txt; returns the text."""
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from .runner import TrialLines
    settings = SearchSettings.load(out)
    out = Path(settings.out)
    exp = Path(settings.storage or out) / EXPERIMENT
    if settings.storage and "://" in settings.storage:
        raise C2FError(f"confirm writes its runs beside the search; {settings.storage} is remote: run it on a "
                       f"copy of the search folder with local storage")
    if exp.exists():
        if not overwrite:
            raise C2FError(f"{exp}: a confirm run is already there; pass --overwrite to replace it")
        shutil.rmtree(exp)
    picks = pick(analyse(load_rows(out)), top)
    configs = [json.loads(r["config"]) for r in picks]
    first = 1 + max(int(c.get("seed", r["seed"] or 0)) for c, r in zip(configs, picks))  # seeds no trial used
    runs = [{**c, "seed": s, "source_trial": r["trial_id"]}
            for c, r in zip(configs, picks) for s in range(first, first + seeds)]
    print(f"confirm: {len(picks)} schedules x {seeds} seeds ({first}..{first + seeds - 1}) = {len(runs)} runs: "
          + ", ".join(r["schedule"] for r in picks), flush=True)
    space = load_space(settings.space)
    if not ray.is_initialized():
        connect_ray(address)
    tuner = tune.Tuner(  # every run trains to its end: both modes are read from the full history
        make_trainable(settings, space, trial_resources(settings, space, joined=address is not None),
                       metric_target=None),
        param_space=dict.fromkeys({k for r in runs for k in r}),  # each run's values come from points_to_evaluate
        tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(points_to_evaluate=runs), num_samples=len(runs),
                                    reuse_actors=settings.reuse_actors),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(exp.parent), verbose=0,
                                  callbacks=[TrialLines(progress_stream)],
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    tuner.fit()
    per_seed, summary = analyse_seeds(load_rows(out, name=EXPERIMENT))
    write_table(_table(per_seed), out / "confirm_seeds.parquet")
    write_table(_table(summary), out / "confirm.parquet")
    plot_seeds(per_seed, summary, out / "confirm.png")
    text = summary_text(summary)
    atomic_write(out / "confirm.txt", text + "\n")
    return text


def _table(rows: list[dict]):
    import pyarrow as pa
    return pa.Table.from_pylist(rows)
