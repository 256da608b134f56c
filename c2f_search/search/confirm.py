"""``confirm``: re-run the baseline and the top front schedules with new seeds, in parallel, as one
Ray Tune run (DIR/confirm), and say which savings hold at every seed (``c2f_search.seeds``).

With a target (``confirm DIR --target NAME ...``) the same runs train on another setting (model, data,
recipe, epoch budget; phase lengths scaled so that each schedule keeps its shape) in DIR/confirm/NAME,
next to the same seeds on the search's own setting (the proxy), and the transfer is measured: each side's
savings against its own baseline at the same seed, the rank correlation of the two orders, and the cost."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..analysis.pareto import analyse, is_learned
from ..analysis.rows import load_rows
from ..analysis.seeds import analyse_seeds, plot_seeds, summary_text
from ..analysis.transfer import cost_numbers, plot_transfer, rank_agreement, transfer_rows, transfer_text
from ..config import SEARCHABLE
from ..errors import C2FError, NoResults, ScheduleError
from ..files import atomic_write
from ..layout import SearchDir, TargetDir
from ..models.pretrained import InitFile
from ..schedule import Schedule, parse_schedule
from ..schema import row_table, write_table
from ..settings import DataSettings, SearchSettings, resolve_test
from .runner import connect_ray, make_trainable, trial_resources
from .space import load_space

TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def pick(res: dict, top: int) -> list[dict]:
    """The baseline reference's trial, then the `top` final-front schedules with the largest budget-mode
    saving (those that did not reach the baseline follow, by metric)."""
    if res["baseline"] is None:
        raise C2FError("confirm needs a finished baseline trial (none:1xE) in the search; run one first")
    q = {x["trial_id"]: x for x in res["table"]}
    front = [r for r in res["final_front"] if not r["is_baseline"]]
    front.sort(
        key=lambda r: (
            q[r["trial_id"]]["flops_saving"] is None,
            -(q[r["trial_id"]]["flops_saving"] or 0),
            -r["val_metric"],
        )
    )
    base = next(t for t in res["final"] if t["trial_id"] == res["baseline"]["trial_id"])
    return [base] + front[:top]


def seed_runs(picks: list[dict], seeds: int, forms: bool = False) -> tuple[list[dict], int]:
    """Each pick's config with `seeds` new seeds (above every seed the search used) and the trial it comes
    from; the first seed. With `forms`, every run names its form and a learned pick runs twice: its
    controller again, and the fixed schedule it trained (exported); a PBT member only in the second form,
    since its controller is a population."""
    configs = [json.loads(r["config"]) for r in picks]
    first = 1 + max(int(c.get("seed", r["seed"] or 0)) for c, r in zip(configs, picks))  # seeds no trial used
    variants = []
    for c, r in zip(configs, picks):
        if not forms:
            variants.append((c, r))
            continue
        if is_learned(r) and "C" not in c:
            variants.append(({**c, "form": "controller"}, r))
        if is_learned(r) and r.get("trained"):
            fixed = {k: v for k, v in c.items() if k not in ("transition", "C")}
            variants.append(({**fixed, "schedule": r["trained"], "form": "exported"}, r))
        if not is_learned(r):
            variants.append(({**c, "form": "fixed"}, r))
    runs = [{**c, "seed": s, "source_trial": r["trial_id"]} for c, r in variants for s in range(first, first + seeds)]
    return runs, first


def _tune(
    settings: SearchSettings, space, runs: list[dict], storage: Path, name: str, address, progress_stream, plan: Plan,
    trackers: list | None = None,
):  # fmt: skip
    """One Tune run of `runs` (each a trial's config) in storage/name; every run trains to its end. Where an
    interrupted one is there (`plan` holds its tuner.pkl's hash), it continues: finished runs stay, the others
    go on from their checkpoints. Ctrl-C and SIGTERM stop it cleanly and raise ``Interrupted``."""
    from ray import tune

    from .runner import _stop_cleanly, _tuner_hash

    trainable = make_trainable(
        settings, space, trial_resources(settings, space, joined=address is not None), metric_target=None
    )
    exp = str(storage / name)
    done = plan.doc.setdefault("tuners", {})
    if name in done and tune.Tuner.can_restore(exp):
        if _tuner_hash(SearchDir(storage), exp) != done[name]:
            raise C2FError(
                f"{exp}: its {SearchDir.TUNER_FILE} is not the file confirm wrote; resuming would unpickle it, "
                f"which can run code, so it is refused: start again with --overwrite"
            )
        tuner = tune.Tuner.restore(exp, trainable, resume_unfinished=True, resume_errored=True)
    else:
        from .runner import shared_params

        fixed = shared_params(settings, space)
        tuner = _new_tuner(settings, runs, storage, name, progress_stream, trainable, trackers or [], fixed)
        done[name] = _tuner_hash(SearchDir(storage), exp)
    plan.save()
    with _stop_cleanly():
        tuner.fit()


def _new_tuner(settings: SearchSettings, runs: list[dict], storage: Path, name: str, progress_stream, trainable,
               trackers: list, fixed: dict):  # fmt: skip
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from .runner import TrialLines
    from .trackers import tune_callbacks

    return tune.Tuner(  # both modes are read from the full history
        trainable,
        param_space=dict.fromkeys({k for r in runs for k in r}),  # each run's values come from points_to_evaluate
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=runs),
            num_samples=len(runs),
            reuse_actors=settings.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=0,
            callbacks=[TrialLines(progress_stream), *tune_callbacks(trackers, str(storage / name), fixed)],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def _local_storage(settings: SearchSettings) -> None:
    if settings.storage and "://" in settings.storage:
        raise C2FError(
            f"confirm writes its runs beside the search; {settings.storage} is remote: run it on a "
            f"copy of the search folder with local storage"
        )


@dataclass
class Plan:
    """What a confirm runs, saved before it trains (``SearchDir.confirm_state``, a target's ``target.json``), so
    that an interrupted one continues with ``--resume``: its settings, its runs, the hash of each Tune run's
    tuner.pkl, and whether it finished (only then are its results written)."""

    path: Path
    doc: dict

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.doc, indent=1))

    @classmethod
    def interrupted(cls, path: Path, again: str, given: dict) -> Plan:
        """The plan of the interrupted confirm at `path`; the settings `given` (not None) must agree with it."""
        from ..files import read_json

        if not path.is_file():
            raise C2FError(f"{path.parent}: no interrupted confirm to resume; run it without --resume")
        doc = read_json(path)
        if doc.get("finished", True):
            raise C2FError(f"{path.parent}: that confirm finished; run it again with --overwrite{again}")
        for k, v in given.items():
            if v is not None and doc.get(k) != v:
                raise C2FError(
                    f"--{k.replace('_', '-')} {v}: the interrupted confirm runs {doc.get(k)}; drop the flag to "
                    f"resume it, or run it again with --overwrite"
                )
        return cls(path, doc)


def run_confirm(
    out, top: int | None, seeds: int | None, overwrite: bool = False, address=None, progress_stream=None,
    init=None, resume: bool = False, dry_run: bool = False, trackers: list | None = None,
) -> str:  # fmt: skip
    """Run the seeds and write DIR/confirm.parquet (per schedule), DIR/confirm_seeds.parquet (per seed),
    DIR/confirm.png and DIR/confirm.txt; returns the text. `init`: another init than the search's. With `resume`,
    an interrupted confirm goes on: the runs that finished are not run again. With `dry_run`, the plan, checked,
    and nothing run or written."""
    import ray

    from ..geometry import Geometry
    from .runner import check_init

    settings = SearchSettings.load(out)
    space = load_space(settings.space, settings.recipe)
    folder = SearchDir(settings.out)
    out = folder.path
    exp = folder.confirm_dir  # local storage only: _local_storage
    _local_storage(settings)
    if resume:
        plan = Plan.interrupted(folder.confirm_state, "", {"top": top, "seeds": seeds})
        settings.init = plan.doc["init"]
        if init:
            now = InitFile.describe(init)
            if not now.same_as(InitFile.from_dict(settings.init)):
                raise C2FError(
                    f"--init {init}: the interrupted confirm runs from another init; drop the flag to resume it"
                )
            settings.init = {**settings.init, "read_from": now.uri}
    elif init:
        settings.init = InitFile.describe(init).to_dict()
    d = settings.data
    check_init(settings, sorted({m for m, _, _ in space.variants()}), Geometry(d.num_mel_bins, d.target_length), 2)
    if not resume:
        own = [p for p in exp.iterdir() if not folder.target(p.name).marker.is_file()] if exp.is_dir() else []
        if own and not overwrite:
            raise C2FError(f"{exp}: a confirm run is already there; pass --overwrite to replace it")
        top, seeds = top or 2, seeds or 3
        picks = pick(analyse(load_rows(out)), top)
        runs, first = seed_runs(picks, seeds)
        plan = Plan(folder.confirm_state, {
            "top": top, "seeds": seeds, "first_seed": first, "runs": runs, "init": settings.init,
            "schedules": [r["schedule"] for r in picks], "finished": False,
        })  # fmt: skip
        if not dry_run:
            for p in own:  # the targets' folders (DIR/confirm/NAME) stay
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            for f in folder.confirm.outputs():  # an earlier confirm's results: never read as this one's
                f.unlink(missing_ok=True)
            exp.mkdir(parents=True, exist_ok=True)
    doc = plan.doc
    if dry_run:
        from .runner import prepare_data

        data = prepare_data(settings, space)
        return dry_run_text(f"confirm {out}", [(settings, space, data, doc["runs"])], resume, exp)
    print(
        f"confirm{' (resumed)' if resume else ''}: {len(doc['schedules'])} schedules x {doc['seeds']} seeds "
        f"({doc['first_seed']}..{doc['first_seed'] + doc['seeds'] - 1}) = {len(doc['runs'])} runs: "
        + ", ".join(doc["schedules"]),
        flush=True,
    )
    if not ray.is_initialized():
        connect_ray(address)
    _tune(settings, space, doc["runs"], out, SearchDir.CONFIRM, address, progress_stream, plan, trackers)
    per_seed, summary = analyse_seeds(load_rows(out, name=SearchDir.CONFIRM))
    files = folder.confirm
    write_table(_table(per_seed), files.seeds)
    write_table(_table(summary), files.table)
    plot_seeds(per_seed, summary, files.plot)
    text = summary_text(summary)
    atomic_write(files.text, text + "\n")
    doc["finished"] = True
    plan.save()
    return text


def dry_run_text(what: str, sides: list, resume: bool, *exps: Path) -> str:
    """A confirm's plan (--dry-run): its runs, one run's resources and the training FLOPs they spend at most
    (the ledger's planned totals), per side: (settings, space, data, runs)."""
    from trainables import trial_config

    from .runner import _asked, planned_run_flops, trial_setup

    lines = [f"dry run: {'resume ' if resume else ''}{what} (nothing started, nothing written)"]
    for settings, space, data, runs in sides:
        setup, budget = trial_setup(settings, space, None), settings.epochs or space.epochs
        flops = sum(planned_run_flops(trial_config(r, setup), data, budget) for r in runs)
        asked = _asked(settings, space)
        schedules = sorted({r["schedule"] for r in runs})
        lines += [
            f"  {len(runs)} runs on {settings.data.train} ({', '.join(space.models)}): "
            f"{len(schedules)} schedules x seeds {sorted({r['seed'] for r in runs})}",
            *(f"    {x}" for x in schedules),
            f"  per run: {asked['cpu']:g} CPU, {asked['gpu']:g} GPU (0: auto, one where the cluster has GPUs)",
            f"  train FLOPs at most {flops:.3g}",
        ]
    if resume:
        done = 0
        for exp in exps:
            try:
                done += sum(1 for r in load_rows(exp.parent, name=exp.name).to_pylist() if r["schedule_done"])
            except NoResults:
                pass
        lines.append(f"  runs finished so far: {done}; the resume trains the others")
    return "\n".join(lines)


def _table(rows: list[dict], metadata: dict | None = None):
    """Rows as a table, every key a column (Arrow infers the columns from the first row alone)."""
    import pyarrow as pa

    keys = dict.fromkeys(k for r in rows for k in r)
    t = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
    return t.replace_schema_metadata({k: json.dumps(v) for k, v in metadata.items()}) if metadata else t


# ---------------------------------------------------------------------------- confirm --target
@dataclass
class Target:
    """What ``confirm --target NAME`` changes; None (or empty) keeps the search's setting."""

    name: str
    model: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    data: str | None = None
    val: str | None = None
    test: str | None = None
    labels: str | None = None
    recipe: str | None = None
    init: str | None = None  # the target's pretrained init; None: the search's
    epochs_factor: float | None = None
    epochs: float | None = None


def target_setting(settings: SearchSettings, space, target: Target):
    """(settings, space, factor, recipe) of the target: the search's, with what the target changes. A
    recipe sets the model, its settings, the training settings, the front end and the epochs; the flags
    given override it. Without --data the search's data, validation and test splits are kept (and its
    normalization); with --data they come from the new data, normalized by its own statistics."""
    from ..models import get_family
    from ..recipes import load_recipe

    recipe = load_recipe(target.recipe) if target.recipe else None
    proxy_epochs = settings.epochs or space.epochs
    if target.epochs:
        epochs = target.epochs
    elif target.epochs_factor:
        epochs = target.epochs_factor * proxy_epochs
    else:
        epochs = recipe.epochs if recipe else proxy_epochs
    model = target.model or (recipe.model if recipe else None)
    models = [model] if model else space.models
    inherited = (
        recipe.model_kwargs
        if recipe and get_family(recipe.model) is get_family(models[0])
        else {}
        if recipe
        else settings.model_kwargs
    )
    takes = set.intersection(*({st.name for st in get_family(m).settings} for m in models))
    kwargs = {**{k: v for k, v in inherited.items() if k in takes}, **target.model_kwargs}  # given ones are checked
    front, d = DataSettings.from_recipe(recipe), settings.data
    if target.data:  # new data: its own splits, normalized by its own statistics unless the recipe gives them
        data = DataSettings(
            target.data,
            target.val,
            target.labels,
            d.task,
            d.skip_bad,
            front.get("norm"),
            d.cache_dir,
            front.get("num_mel_bins"),
            front.get("target_length"),
            None,
            d.features,
            d.workers,
            d.labelled,
        ).resolved()
        test = resolve_test(target.test)
    else:
        data = replace(
            d,
            **({"val": resolve_test(target.val)} if target.val else {}),
            **({"labels": str(Path(target.labels).resolve())} if target.labels else {}),
        )
        if recipe:  # its front end; the normalization is computed again unless the recipe gives it
            data = replace(
                data,
                norm=front.get("norm"),
                num_mel_bins=front.get("num_mel_bins", d.num_mel_bins),
                target_length=front.get("target_length", d.target_length),
            )
        test = resolve_test(target.test) if target.test else settings.test
    fixed = {**space.fixed, **(recipe.train if recipe else {})}
    t_settings = replace(settings, data=data, model_kwargs=kwargs, test=test, epochs=epochs)
    if target.init:
        t_settings.init = InitFile.describe(target.init).to_dict()
    elif settings.init and not {get_family(m).name for m in models} & {
        get_family(m).name for m in settings.init.get("models", [])
    }:
        print(
            f"target {target.name}: the search's init ({settings.init['uri']}) is for another model family; the "
            f"target's runs start from random weights (give --init for one of its own)"
        )
        t_settings.init = None
    t_space = replace(
        space, model=models[0], models=models, fixed=fixed, grid_models=None if model else space.grid_models
    )
    return t_settings, t_space, epochs / proxy_epochs, recipe


def at_target(run: dict, factor: float, model: str | None, recipe) -> tuple[dict, Schedule]:
    """A run's config at the target, and its schedule: phase lengths (and a controller's budget and max) times
    `factor`, the target's model, and the recipe's settings in place of the searched ones."""
    from ..controllers import scale_transition

    schedule = parse_schedule(run["schedule"]).scaled(factor)
    out = {**run, "schedule": str(schedule)}
    if "transition" in out:
        out["transition"] = scale_transition(out["transition"], factor)
    if model:
        out["model"] = model
    for k in recipe.train if recipe else {}:
        if k != "seed":
            out.pop(k, None)
    return out, schedule


def _check_space(t_space, runs: list[dict], schedules: list[Schedule], name: str):
    """The target's runs as a grid, so that ``prepare_data`` checks exactly them (each with its model and
    settings) against the target's data and extracts the features they read."""
    return replace(
        t_space,
        path=f"confirm --target {name}",
        schedules=schedules,
        grid_models=[r.get("model") for r in runs] if any("model" in r for r in runs) else None,
        grid_fixed=[{k: v for k, v in r.items() if k in SEARCHABLE and k != "transition"} for r in runs],
        hparams={},
        controllers=None,
    )


def _reuse(out: Path, runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows of a plain confirm's finished runs that are proxy runs asked for here, the runs still to do).
    A plain confirm runs the same configs at the same seeds; its rows get the form they have here."""
    try:
        rows = load_rows(out, name=SearchDir.CONFIRM).to_pylist()
    except NoResults:
        return [], runs
    done = {}
    for r in rows:
        cfg = json.loads(r["config"])
        if r["status"] == "finished" and "form" not in cfg:
            done.setdefault((cfg.get("source_trial"), cfg["seed"]), []).append(r)
    reused, todo = [], []
    for run in runs:
        got = done.get((run["source_trial"], run["seed"])) if run["form"] != "exported" else None
        if got:
            reused += [
                {**r, "config": json.dumps({**json.loads(r["config"]), "form": run["form"]}, sort_keys=True)}
                for r in got
            ]
        else:
            todo.append(run)
    return reused, todo


def _last_flops(rows: list[dict]) -> float:
    """The training FLOPs every trial in `rows` spent (each trial's last count), summed."""
    last = {}
    for r in rows:
        last[r["trial_id"]] = max(last.get(r["trial_id"], 0.0), r["train_flops"] or 0.0)
    return sum(last.values())


def _describe(t: Target, t_settings, t_space, factor: float, proxy_epochs: float) -> str:
    given = {k: v for k, v in asdict(t).items() if v not in (None, {}) and k != "name"}
    return (
        f"target {t.name}: {', '.join(f'{k}={v}' for k, v in given.items()) or 'the search setting'} -> model "
        f"{'/'.join(t_space.models)} {t_settings.model_kwargs or ''}, data {t_settings.data.train}, "
        f"{t_settings.epochs:g} epochs ({factor:g} x the search's {proxy_epochs:g}; phase lengths scaled by {factor:g})"
    )


def run_target_confirm(
    out, target: Target, top: int | None, seeds: int | None, overwrite: bool = False, address=None,
    progress_stream=None, resume: bool = False, dry_run: bool = False, trackers: list | None = None,
) -> str:  # fmt: skip
    """Confirm at a target: check everything (the target's data prepared and checked as a search's driver
    does) before anything is written, then run the proxy seeds not already run by a plain confirm and the
    target's runs, and write DIR/confirm/NAME (``layout.TargetDir``). Returns the text. With `resume`, an
    interrupted one goes on with the target it was started with: the runs that finished are not run again."""
    import ray

    settings = SearchSettings.load(out)
    search = SearchDir(settings.out)
    _local_storage(settings)
    if resume:
        folder = search.target(target.name)
        saved = Plan.interrupted(folder.marker, f" --target {target.name}", {"top": top, "seeds": seeds})
        given = {k: v for k, v in asdict(target).items() if v not in (None, {})}
        if any(saved.doc["target"].get(k) != v for k, v in given.items()):
            raise C2FError(
                f"--target {target.name}: the interrupted confirm runs {saved.doc['target']}; give only --target "
                f"{target.name} --resume to resume it, or run it again with --overwrite"
            )
        target, top, seeds = Target(**saved.doc["target"]), saved.doc["top"], saved.doc["seeds"]
    else:
        folder = _target_folder(search, target, overwrite)
        top, seeds = top or 2, seeds or 3
    plan = _plan_target(settings, search, target, top, seeds)
    if resume and (plan.t_settings.init or {}).get("sha256") != (saved.doc["init"] or {}).get("sha256"):
        raise C2FError(f"{folder.marker}: the target's init changed since this confirm started; restore it")
    if resume and plan.runs != saved.doc["runs"]:
        raise C2FError(
            f"{folder.marker}: the search's front changed since this confirm started; run it again with --overwrite"
        )
    print(
        "\n".join(plan.header)
        + f"\nconfirm --target: {len(plan.runs)} target runs, {len(plan.todo)} proxy runs"
        + (" (resumed)" if resume else ""),
        flush=True,
    )
    t = plan.t_settings
    if dry_run:
        from .runner import prepare_data

        sides = [(t, plan.t_space, plan.t_data, plan.runs)]
        if plan.todo:  # the proxy runs a plain confirm did not run
            sides.insert(0, (settings, plan.space, prepare_data(settings, plan.space), plan.todo))
        return dry_run_text(f"confirm --target {target.name}", sides, resume, folder.path / folder.PROXY,
                            folder.path / folder.TARGET)  # fmt: skip
    if resume:
        progress = saved
    else:
        if folder.path.exists():
            shutil.rmtree(folder.path)
        folder.path.mkdir(parents=True)
        progress = Plan(folder.marker, {
            "target": asdict(target), "top": top, "seeds": seeds, "first_seed": plan.first, "factor": plan.factor,
            "data": t.data.to_dict(), "model": plan.t_space.models, "model_kwargs": t.model_kwargs,
            "init": t.init, "test": t.test, "epochs": t.epochs, "runs": plan.runs, "finished": False,
        })  # fmt: skip
    if not ray.is_initialized():
        connect_ray(address)
    if plan.todo:
        _tune(settings, plan.space, plan.todo, folder.path, folder.PROXY, address, progress_stream, progress, trackers)
    _tune(t, plan.t_space, plan.runs, folder.path, folder.TARGET, address, progress_stream, progress, trackers)
    text = _write_transfer(folder, plan)
    progress.doc["finished"] = True
    progress.save()
    return text


def _target_folder(search: SearchDir, target: Target, overwrite: bool) -> TargetDir:
    if not TARGET_NAME.fullmatch(target.name) or target.name.startswith("train_schedule"):
        raise C2FError(
            f"--target {target.name!r}: name it with letters, digits, '.', '_' or '-' (up to 64, not "
            f"starting with train_schedule), e.g. --target depth4"
        )
    folder = search.target(target.name)
    if folder.path.exists():
        if not folder.marker.is_file():
            raise C2FError(f"{folder.path}: exists and is not a target's folder; choose another --target name")
        if not overwrite:
            raise C2FError(
                f"{folder.path}: target {target.name} was confirmed already; pass --overwrite to replace "
                f"it, or choose another --target name"
            )
    return folder


@dataclass
class _TargetPlan:
    """What a target confirmation runs: the search's rows and space, the target's settings and space, the
    target's runs, the proxy runs still to do and those a plain confirm already ran."""

    search_rows: object
    space: object
    t_settings: SearchSettings
    t_space: object
    factor: float
    first: int
    runs: list
    todo: list
    reused: list
    header: list
    t_data: object = None


def _plan_target(settings: SearchSettings, search: SearchDir, target: Target, top: int, seeds: int) -> _TargetPlan:
    """Every run of the target confirmation, checked (the target's data prepared as a search's driver does)
    before anything is written."""
    from .runner import prepare_data

    space = load_space(settings.space, settings.recipe)
    search_rows = load_rows(search.path)
    proxy_runs, first = seed_runs(pick(analyse(search_rows), top), seeds, forms=True)
    t_settings, t_space, factor, recipe = target_setting(settings, space, target)
    try:
        runs, schedules = zip(
            *(at_target(r, factor, target.model or (recipe.model if recipe else None), recipe) for r in proxy_runs)
        )
    except ScheduleError as e:
        budget = f"--epochs {target.epochs:g}" if target.epochs else f"--epochs-factor {factor:g}"
        raise C2FError(
            f"{budget}: scales a phase to less than one optimizer step ({e}); give the target more epochs"
        ) from None
    runs = list(runs)
    data = prepare_data(t_settings, _check_space(t_space, runs, list(schedules), target.name))  # before any file
    t_settings.data = t_settings.data.with_data(data)  # every target run reads the same
    reused, todo = _reuse(search.path, proxy_runs)
    header = [
        _describe(target, t_settings, t_space, factor, settings.epochs or space.epochs),
        f"seeds {first}..{first + seeds - 1}, the same on both sides; proxy side: {len(proxy_runs) - len(todo)} "
        f"runs reused from the plain confirm in {search.confirm_dir}, {len(todo)} run here",
    ]
    return _TargetPlan(search_rows, space, t_settings, t_space, factor, first, runs, todo, reused, header, data)


def _write_transfer(folder: TargetDir, plan: _TargetPlan) -> str:
    """Each side's seeds against its own baseline, the transfer table, the rank correlation and the cost."""
    new_proxy = load_rows(folder.path, name=folder.PROXY).to_pylist() if plan.todo else []
    per_p, sum_p = analyse_seeds(row_table(plan.reused + new_proxy))
    target_rows = load_rows(folder.path, name=folder.TARGET)
    per_t, sum_t = analyse_seeds(target_rows)
    if plan.t_settings.test:
        _test_metrics(plan.t_settings, target_rows.to_pylist(), per_t, sum_t)
    rows = transfer_rows(sum_p, sum_t)
    ranks = rank_agreement(rows)
    searched = plan.search_rows.to_pylist()
    cost = cost_numbers(
        rows,
        _last_flops(searched),
        len({r["trial_id"] for r in searched}),
        _last_flops(target_rows.to_pylist()),
        _last_flops(new_proxy),
    )
    text = transfer_text(rows, ranks, cost, plan.header)
    text += "\nat the target, per schedule:\n" + summary_text(sum_t)
    write_table(_table([dict(q, side="proxy") for q in per_p] + [dict(q, side="target") for q in per_t]), folder.seeds)
    write_table(_table(rows, {"rank_correlation": ranks, "cost": cost, "header": plan.header}), folder.table)
    plot_transfer(per_p, per_t, rows, folder.plot)
    atomic_write(folder.text, text + "\n")
    return text


def _test_metrics(t_settings, rows: list[dict], per_seed: list[dict], summary: list[dict]) -> None:
    """Each target run's final model on the target's --test split: per seed, and mean ± sd per schedule."""
    import pyarrow.fs as pafs

    from ..analysis.formatting import mean_sd
    from ..analysis.seeds import schedule_key
    from ..train.evaluator import evaluate_state, read_state

    data = t_settings.data.load(test=t_settings.test)
    last = {}
    for r in rows:
        if r["checkpoint_path"] and r["step"] >= last.get(r["trial_id"], {"step": -1})["step"]:
            last[r["trial_id"]] = r
    for q in per_seed:
        r = last.get(q["trial_id"])
        q["test_metric"] = (
            evaluate_state(read_state(pafs.LocalFileSystem(), r["checkpoint_path"]), data, "test")
            if r and q["status"] == "finished"
            else None
        )
    for s in summary:
        s["test_metric_mean"], s["test_metric_sd"] = mean_sd(
            [q["test_metric"] for q in per_seed if schedule_key(q) == schedule_key(s)]
        )
