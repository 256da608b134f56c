"""Search spaces are YAML data files (docs/search_spaces.md); this module turns one into an
Optuna define-by-run function.

Two kinds of file:
  * an open space (``space:``): method, number of coarse phases, C values, phase
    fractions and hyperparameters, sampled by Optuna; with ``controller:`` the coarse phases are
    learned (``CxAUTO``) by a sampled controller under the epoch budget, and ``pbt:`` sets
    population-based training (``search --scheduler pbt``);
  * a grid (``schedules:``): listed schedules run as they are (e.g. the paper's grid).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..compress import baseline_method, get_method, list_methods
from ..config import FIXED_ONLY, SEARCHABLE, TrainConfig
from ..errors import ConfigError, ScheduleError, SpaceError
from ..files import read_yaml
from ..schedule import Phase, Schedule, parse_schedule
from ..validate import validate

TOP_KEYS = {
    "name",
    "description",
    "data",
    "model",
    "epochs",
    "metric_target",
    "resources",
    "space",
    "schedules",
    "fixed",
    "objective",
    "finetune",
    "pbt",
    "init",
    "recipe",
}
PBT_KEYS = {"interval": 0.5, "quantile": 0.25, "lower_C": 0.5}  # and their defaults
FINETUNE_KEYS = {"data", "schedule", "fixed"}
SPACE_KEYS = {
    "method",
    "later_method",
    "coarse_phases",
    "C_values",
    "phase_fraction",
    "max_coarse_fraction",
    "controller",
    "final_fraction",
}
HPARAMS = set(SEARCHABLE)
LEARNED = Schedule("fshift", (Phase(2, None), Phase(1, 1.0)))  # a learned schedule to check controller settings on
RESOURCE_KEYS = {"cpu", "gpu"}


@dataclass
class Space:
    path: str
    name: str
    epochs: float
    model: str = "ast-tiny"  # the first of `models`
    models: list[str] = field(default_factory=lambda: ["ast-tiny"])  # several: searched ('model')
    grid_models: list[str | None] | None = None  # grid mode: each listed schedule's own model, if given
    grid_fixed: list[dict] | None = None  # grid mode: each listed schedule's own fixed settings
    objective: str = "supervised"  # masked-patch: a pretraining search
    finetune: dict | None = None  # pretraining search: {data, schedule, fixed}; None = the proxy metric
    data: str | None = None
    metric_target: float | None = None
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": "auto"})  # auto: search.runner.trial_resources
    fixed: dict = field(default_factory=dict)
    hparams: dict = field(default_factory=dict)  # name -> list (categorical) or {low, high, log, int}
    schedules: list[Schedule] | None = None  # grid mode
    methods: list[str] = field(default_factory=list)
    later_methods: list[str] | None = None  # mixed schedules: the method of the coarse phases after the first
    coarse_phases: tuple[int, int] = (0, 3)
    C_values: list[int] = field(default_factory=lambda: [8, 4, 2])
    phase_fraction: tuple[float, float] = (0.1, 0.3)
    max_coarse_fraction: float = 0.8
    controllers: dict | None = None  # learned coarse phases: controller name -> {setting: spec}
    final_fraction: tuple[float, float] = (0.4, 0.6)  # learned: the final phase's share of the epochs
    pbt: dict = field(default_factory=lambda: dict(PBT_KEYS))
    init: str | None = None  # a pretrained init (path or URI) every trial starts from; --init overrides it
    recipe: str | None = None  # a published recipe under the space's fixed settings; --recipe overrides it

    @property
    def is_adaptive(self) -> bool:
        return self.controllers is not None

    @property
    def is_grid(self) -> bool:
        return self.schedules is not None

    @property
    def searches_model(self) -> bool:
        return len(self.models) > 1

    def grid(self, epochs: float | None = None) -> list[str]:
        """The listed schedules, rescaled to `epochs` total when given; an entry with its own model
        is labelled 'MODEL SCHEDULE'."""
        out = []
        for s, m in zip(self.schedules or [], self.grid_models or [None] * len(self.schedules or [])):
            k = (epochs or s.total_epochs) / s.total_epochs
            text = str(
                Schedule(s.method, tuple(replace(p, epochs=_round(p.epochs * k)) for p in s.phases), s.coarse_only)
            )
            out.append(f"{m} {text}" if m else text)
        return out

    def grid_size(self) -> int:
        """Trials in the whole grid: every listed schedule, for every searched model."""
        return len(self.schedules or []) * (len(self.models) if self.searches_model else 1)

    def variants(self) -> set[tuple[str, str, int]]:
        """Every (model, method, C) a trial of this space may train at."""
        if self.is_grid and self.grid_models:
            return {
                (m or self.model, p.method, p.C) for s, m in zip(self.schedules, self.grid_models) for p in s.phases
            }
        return {(m, meth, C) for m in self.models for meth, C in self.phase_variants()}

    def max_C(self) -> int:
        """The largest C of a phase that changes the token grid (a token-dropping phase keeps it)."""
        return max((C for m, C in self.phase_variants() if not get_method(m).drops_tokens), default=1)

    def phase_variants(self) -> set[tuple[str, int]]:
        """Every (method, C) a trial of this space may train at."""
        if self.is_grid:
            return {(p.method, p.C) for s in self.schedules for p in s.phases}
        methods = [*self.methods, *(self.later_methods or [])]
        out = {(m, C) for m in methods for C in [*self.C_values, 1]} if self.coarse_phases[1] > 0 else set()
        return out | ({(baseline_method(), 1)} if self.coarse_phases[0] == 0 else set())

    def probe_config(self, model: str | None = None) -> TrainConfig:
        """A TrainConfig of a model of this space and its fixed settings (for checks before any trial)."""
        return TrainConfig(schedule="none:1x1", model=model or self.model, objective=self.objective, **self.fixed)

    def trial_configs(self, model_kwargs: dict | None = None) -> list[tuple[dict, TrainConfig]]:
        """For every model (and grid entry) a trial may train, its TrainConfig with the fixed settings, then
        with each value a trial may get of each searched setting (a range's ends), one at a time; each with
        {setting: the space key that sets it}, so that a check against the data names the key."""
        n = len(self.schedules or [])
        if self.is_grid:
            entries = [
                (m, fx)
                for gm, fx in zip(self.grid_models or [None] * n, self.grid_fixed or [{}] * n)
                for m in ([gm] if gm else self.models)
            ]
        else:
            entries = [(m, {}) for m in self.models]
        out, seen = [], set()
        for model, own in entries:
            keys = {
                "model": "model",
                **{k: f"fixed.{k}" for k in self.fixed},
                **{k: f"schedules.fixed.{k}" for k in own},
            }
            for values in [{}] + [{k: v} for k, spec in self.hparams.items() for v in _extremes(spec)]:
                settings = {**self.fixed, **own, **values}
                key = repr((model, sorted(settings.items())))
                if key not in seen:
                    seen.add(key)
                    out.append(
                        (
                            {**keys, **{k: f"space.{k}" for k in values}},
                            TrainConfig(
                                "none:1x1",
                                model=model,
                                model_kwargs=model_kwargs or {},
                                objective=self.objective,
                                **settings,
                            ),
                        )
                    )
        return out

    def define_by_run(self, epochs: float | None = None, flat: bool = False) -> DefineByRun:
        """An Optuna define-by-run function: ``space(trial) -> {"schedule": ..., hyperparameters}``; `flat`:
        every trial sets every schedule parameter (``all_schedule_params``), used or not."""
        return DefineByRun(self, epochs or self.epochs, flat)

    def all_schedule_params(self, trial) -> None:
        """Set every parameter a schedule of this open space may read, whatever the number of phases: a sampler
        that models only the parameters all trials share (Optuna's GPSampler: the intersection search space)
        then models them all; ``sample_schedule`` reads the values set here, and ignores the rest."""
        lo, hi = self.coarse_phases
        if hi > lo:
            trial.suggest_int("coarse_phases", lo, hi)
        if hi == 0:
            return
        trial.suggest_categorical("method", self.methods)
        if self.later_methods and hi > 1:
            trial.suggest_categorical("later_method", self.later_methods)
        for k in range(max(1, lo), hi + 1):
            trial.suggest_categorical(f"C_{k}", _C_combos(self.C_values, k))
        if self.is_adaptive:
            trial.suggest_float("final_fraction", *self.final_fraction)
        else:
            for i in range(hi):
                trial.suggest_float(f"fraction_{i + 1}", *self.phase_fraction)

    def population_schedule(self, method: str, E: float, later: str | None = None) -> Schedule:
        """A PBT member's schedule: every C of the space, learned (CxAUTO), then the final phase; with
        `later`, the phases after the first train by it (so PBT lowering C may switch the method)."""
        final = _round(E * sum(self.final_fraction) / 2)
        Cs = sorted(self.C_values, reverse=True)
        return Schedule(method, (*(Phase(C, None, later if k else None) for k, C in enumerate(Cs)), Phase(1, final)))

    def population_schedules(self, E: float) -> list[Schedule]:
        """Every schedule a PBT member may draw: one per method, or per (method, later method)."""
        return [self.population_schedule(m, E, later) for m in self.methods for later in (self.later_methods or [None])]

    def sample_transition(self, trial, E: float) -> str:
        """A learned space's controller and its settings, as a --transition rule with the epoch budget."""
        name = trial.suggest_categorical("controller", sorted(self.controllers))
        kv = [f"{k}={_suggest(trial, f'{name}_{k}', spec)}" for k, spec in sorted(self.controllers[name].items())]
        return f"{name}:" + ",".join(kv + [f"budget={E:g}"])

    def sample_schedule(self, trial, E: float) -> Schedule:
        lo, hi = self.coarse_phases
        k = trial.suggest_int("coarse_phases", lo, hi) if hi > lo else lo
        if k == 0:
            return Schedule(baseline_method(), (Phase(1, E),))
        method = trial.suggest_categorical("method", self.methods)
        # a mixed schedule: the coarse phases after the first draw one method of their own
        later = trial.suggest_categorical("later_method", self.later_methods) if self.later_methods and k > 1 else None
        Cs = [int(c) for c in trial.suggest_categorical(f"C_{k}", _C_combos(self.C_values, k)).split("-")]
        if self.is_adaptive:  # the controller learns the coarse lengths; the final phase keeps its share
            final = _round(trial.suggest_float("final_fraction", *self.final_fraction) * E)
            return Schedule(
                method, (*(Phase(C, None, later if i else None) for i, C in enumerate(Cs)), Phase(1, final))
            )
        fr = [trial.suggest_float(f"fraction_{i + 1}", *self.phase_fraction) for i in range(k)]
        if sum(fr) > self.max_coarse_fraction:  # keep a real full-resolution phase
            fr = [f * self.max_coarse_fraction / sum(fr) for f in fr]
        coarse = [Phase(C, _round(f * E), later if i else None) for i, (C, f) in enumerate(zip(Cs, fr))]
        return Schedule(method, (*coarse, Phase(1, _round(E - sum(p.epochs for p in coarse)))))


def _C_combos(C_values: list[int], k: int) -> list[str]:
    """One categorical per k over the strictly decreasing C tuples: fixed choices per name, as samplers need."""
    return ["-".join(map(str, c)) for c in itertools.combinations(sorted(C_values, reverse=True), k)]


class DefineByRun:
    """Picklable (Tune checkpoints its searcher) define-by-run function over a Space."""

    flat = False  # a searcher pickled before `flat` existed

    def __init__(self, space: Space, epochs: float, flat: bool = False):
        self.space, self.epochs, self.flat = space, epochs, flat

    def __call__(self, trial) -> dict:
        sp = self.space
        cfg = {"model": trial.suggest_categorical("model", sp.models)} if sp.searches_model else {}
        if sp.is_grid:
            labels = sp.grid(self.epochs)
            label = trial.suggest_categorical("schedule", labels)
            model, _, schedule = label.rpartition(" ")
            cfg.update(
                {
                    "schedule": schedule,
                    **({"model": model} if model else {}),
                    **(sp.grid_fixed[labels.index(label)] if sp.grid_fixed else {}),
                }
            )
        else:
            if self.flat:
                sp.all_schedule_params(trial)
            schedule = sp.sample_schedule(trial, self.epochs)
            cfg["schedule"] = str(schedule)
            if schedule.is_adaptive:
                cfg["transition"] = sp.sample_transition(trial, self.epochs)
        for name, spec in sp.hparams.items():
            cfg[name] = _suggest(trial, name, spec)
        return cfg


def _round(x: float) -> float:
    return round(float(x), 3)


def _suggest(trial, name, spec):
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    if spec.get("int"):
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))


def _err(path, key, msg) -> SpaceError:
    return SpaceError(f"{path}: key '{key}': {msg} (schema: docs/search_spaces.md)")


def _check_hparam(path, name, spec):
    if isinstance(spec, list):
        if not spec:
            raise _err(path, f"space.{name}", "an empty list; give at least one value")
        return
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "int"}:
        raise _err(path, f"space.{name}", "must be a list of values or {low: .., high: .., log: bool, int: bool}")
    try:
        lo, hi = float(spec["low"]), float(spec["high"])
    except (TypeError, ValueError):
        raise _err(
            path, f"space.{name}", "low and high must be numbers (write 1.0e-3, not 1e-3, for YAML floats)"
        ) from None
    if not lo < hi or (spec.get("log") and lo <= 0):
        raise _err(path, f"space.{name}", f"needs low < high (and low > 0 with log), got {lo}, {hi}")


def _extremes(spec) -> list:
    return list(spec) if isinstance(spec, list) else [spec["low"], spec["high"]]


def _check_values(path, section: str, model: str, fixed: dict, values: dict) -> None:
    """Every value a trial may get passes TrainConfig's checks, so no trial crashes on a bad setting."""
    for name, vals in values.items():
        for v in vals:
            try:
                validate(TrainConfig(schedule="none:1x1", model=model, **{**fixed, name: v}))
            except ConfigError as e:
                raise _err(path, f"{section}.{e.field}", e.problem) from None
            except TypeError:
                raise _err(path, f"{section}.{name}", f"{v!r} is not a valid value") from None


def _finetune(path, doc, objective, models) -> dict | None:
    """A pretraining search's fixed fine-tune: {data, schedule, fixed}; its metric is the trial's objective."""
    ft = doc.get("finetune")
    if ft is None:
        return None
    if objective != "masked-patch":
        raise _err(path, "finetune", "only a pretraining search (objective: masked-patch) has a fine-tune")
    if not isinstance(ft, dict) or set(ft) - FINETUNE_KEYS or not {"data", "schedule"} <= set(ft):
        raise _err(path, "finetune", "must be {data: ..., schedule: ..., fixed: {...}} (data: the labelled set)")
    try:
        TrainConfig(str(ft["schedule"]))
    except ScheduleError as e:
        raise _err(path, "finetune.schedule", str(e)) from None
    fixed = ft.get("fixed") or {}
    bad = set(fixed) - HPARAMS
    if bad:
        raise _err(path, f"finetune.fixed.{sorted(bad)[0]}", f"unknown; allowed: {', '.join(sorted(HPARAMS))}")
    for m in models:
        _check_values(path, "finetune.fixed", m, fixed, {k: [v] for k, v in fixed.items()})
    return {"data": str(ft["data"]), "schedule": str(ft["schedule"]), "fixed": dict(fixed)}


def find_space(name_or_path: str) -> Path:
    """A path, or the name of a shipped space (default, paper, table1, ...)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    import search_spaces  # shipped beside c2f_search in the wheel and in a checkout

    shipped = Path(search_spaces.__file__).parent / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in Path(search_spaces.__file__).parent.glob("*.yaml"))
    raise SpaceError(f"{name_or_path}: no such search-space file; give a path or one of: {', '.join(names)}")


def load_space(name_or_path: str, recipe: str | None = None) -> Space:
    """A space file, checked in full: every value a trial may get passes the checks a trial would make.
    `recipe` (``--recipe``) replaces the file's ``recipe:``; a recipe's training settings sit under the
    space's ``fixed:`` ones, and its model is the space's where the file names none."""
    path = find_space(name_or_path)
    doc = read_yaml(path, SpaceError)
    sp = _top_level(path, doc, recipe)
    if "schedules" in doc:
        _grid(path, doc, sp)
    else:
        _open(path, doc, sp)
    return sp


def _recipe(path, doc, name):
    """The recipe a space's trials train under: `name` (the flag), else the file's ``recipe:`` key."""
    from ..recipes import load_recipe

    name = name or doc.get("recipe")
    if name is None:
        return None
    try:
        return load_recipe(str(name))
    except ConfigError as e:
        raise _err(path, "recipe", e.problem) from None


def _top_level(path, doc, recipe_name=None) -> Space:
    """The keys every space has: epochs, model(s), objective, resources, fixed settings, a fine-tune."""
    if not isinstance(doc, dict):
        raise SpaceError(f"{path}: must be a YAML mapping with 'epochs' and 'space' or 'schedules'")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise _err(path, sorted(unknown)[0], f"unknown key; allowed keys are {', '.join(sorted(TOP_KEYS))}")
    if ("space" in doc) == ("schedules" in doc):
        raise _err(path, "space", "give exactly one of 'space' (open search) or 'schedules' (grid)")
    epochs = doc.get("epochs")
    if not isinstance(epochs, (int, float)) or epochs <= 0:
        raise _err(path, "epochs", f"the epoch budget per trial must be a number > 0, got {epochs!r}")
    res = doc.get("resources", {})
    if (
        not isinstance(res, dict)
        or set(res) - RESOURCE_KEYS
        or any(not (isinstance(v, (int, float)) and v >= 0 or (k, v) == ("gpu", "auto")) for k, v in res.items())
    ):
        raise _err(
            path,
            "resources",
            "must be {cpu: N, gpu: N} with numbers >= 0 (gpu may be fractional, e.g. 0.5, "
            "or auto: one GPU per trial where the cluster has GPUs)",
        )
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "must be a mapping of hyperparameter: value")
    bad = set(fixed) - HPARAMS - set(FIXED_ONLY)
    if bad:
        raise _err(
            path,
            f"fixed.{sorted(bad)[0]}",
            f"unknown hyperparameter; allowed: {', '.join(sorted(HPARAMS | set(FIXED_ONLY)))}",
        )
    init = doc.get("init")
    if init is not None and (not isinstance(init, str) or not init):
        raise _err(path, "init", f"a path or URI (s3://, gs://) of a pretrained file, got {init!r}")
    recipe = _recipe(path, doc, recipe_name)
    fixed = {**(recipe.train if recipe else {}), **fixed}
    models = doc.get("model", recipe.model if recipe else "ast-tiny")
    models = models if isinstance(models, list) else [models]
    for model in models:
        _check_model(path, "model", model)
    if not models or len(set(models)) != len(models):
        raise _err(path, "model", "a model name or a list of distinct model names")
    model = models[0]
    from ..objectives import OBJECTIVES

    objective = doc.get("objective", "supervised")
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise _err(path, "objective", f"must be one of {', '.join(OBJECTIVES.names())}, got {objective!r}")
    for m in models:
        _check_values(path, "fixed", m, {**fixed, "objective": objective}, {k: [v] for k, v in fixed.items()})
    mt = doc.get("metric_target")
    if mt is not None and not (isinstance(mt, (int, float)) and 0 <= mt <= 1):
        raise _err(path, "metric_target", f"accuracy and mAP lie in [0, 1], got {mt!r}")
    sp = Space(
        str(path),
        doc.get("name", path.stem),
        float(epochs),
        model=model,
        models=models,
        data=doc.get("data"),
        metric_target=doc.get("metric_target"),
        resources={"cpu": 1, "gpu": "auto", **res},
        fixed=fixed,
        objective=objective,
        finetune=_finetune(path, doc, objective, models),
        init=init,
        recipe=recipe.name if recipe else None,
    )
    return sp


def _grid(path, doc, sp: Space) -> None:
    """A grid (``schedules:``): listed schedules, each maybe with its own model and fixed settings."""
    fixed, model, models, objective = sp.fixed, sp.model, sp.models, sp.objective
    items = doc["schedules"]
    if not isinstance(items, list) or not items:
        raise _err(path, "schedules", "must be a non-empty list of schedule strings like fshift:4x5,1x15")
    entries = [it if isinstance(it, dict) else {"schedule": it} for it in items]
    if any(set(e) - {"schedule", "model", "fixed"} or "schedule" not in e for e in entries):
        raise _err(path, "schedules", "each entry is a schedule string or {schedule: ..., model: ..., fixed: {...}}")
    try:
        sp.schedules = [parse_schedule(str(e["schedule"])) for e in entries]
    except ScheduleError as e:
        raise _err(
            path, "schedules", f"{e}; quote schedules in YAML flow lists, ['fshift:4x5,1x15'], since commas split them"
        ) from None
    if any("model" in e for e in entries):
        if len(models) > 1:
            raise _err(path, "model", "give one model (the default) when grid entries name their own")
        sp.grid_models = [e.get("model") for e in entries]
        for m in filter(None, sp.grid_models):
            _check_model(path, "schedules", m)
    if any("fixed" in e for e in entries):
        sp.grid_fixed = [dict(e.get("fixed") or {}) for e in entries]
        for m, fx in zip(sp.grid_models or [model] * len(entries), sp.grid_fixed):
            bad = set(fx) - HPARAMS
            if bad:
                raise _err(path, f"schedules.fixed.{sorted(bad)[0]}", f"unknown; allowed: {', '.join(sorted(HPARAMS))}")
            _check_values(path, "schedules.fixed", m or model, {**fixed, **fx}, {k: [v] for k, v in fx.items()})
    _check_token_drop(path, "schedules", objective, [p.method for s in sp.schedules for p in s.phases if p.C > 1])
    if len(set(sp.grid())) != len(entries):
        raise _err(path, "schedules", "two entries run the same model and schedule; list each once")
    sp.hparams = {}


def _open(path, doc, sp: Space) -> None:
    """An open space (``space:``): methods, C values, phase fractions and hyperparameters to sample; a learned
    space's controllers; PBT's settings."""
    fixed, models, objective, epochs = sp.fixed, sp.models, sp.objective, doc["epochs"]
    body = doc["space"]
    if not isinstance(body, dict):
        raise _err(path, "space", "must be a mapping")
    for key, spec in body.items():
        if key in SPACE_KEYS:
            continue
        if key in FIXED_ONLY:
            raise _err(
                path,
                f"space.{key}",
                f"can be fixed (fixed.{key}) but not searched: it changes speed and "
                f"numerics, not the FLOPs a front is drawn against",
            )
        if key not in HPARAMS:
            raise _err(path, f"space.{key}", f"unknown; allowed: {', '.join(sorted(SPACE_KEYS | HPARAMS))}")
        _check_hparam(path, key, spec)
        sp.hparams[key] = spec
    for m in models:
        _check_values(
            path, "space", m, {**fixed, "objective": objective}, {k: _extremes(v) for k, v in sp.hparams.items()}
        )
    compressing = list_methods(compressing_only=True)
    from ..models import get_family
    from ..objectives import get_objective

    takes_drop = get_objective(objective).takes_token_drop
    # without a list: every method that each model and the objective can train
    usable = [
        m
        for m in compressing
        if all(get_method(m).needs <= get_family(x).provides for x in models)
        and (takes_drop or not get_method(m).drops_tokens)
    ]
    methods = body.get("method", usable)
    if not isinstance(methods, list) or not methods or set(methods) - set(compressing):
        raise _err(path, "space.method", f"must be a list drawn from {', '.join(compressing)}")
    sp.methods = methods
    later = body.get("later_method")
    if later is not None and (not isinstance(later, list) or not later or set(later) - set(compressing)):
        raise _err(path, "space.later_method", f"must be a list drawn from {', '.join(compressing)}")
    sp.later_methods = later
    _check_token_drop(path, "space.method", objective, methods)
    _check_token_drop(path, "space.later_method", objective, later or [])
    cp = body.get("coarse_phases", {"low": 0, "high": 3})
    if not (isinstance(cp, dict) and {"low", "high"} == set(cp) and 0 <= cp["low"] <= cp["high"]):
        raise _err(path, "space.coarse_phases", "must be {low: 0.., high: ..} with low <= high")
    Cs = body.get("C_values", [8, 4, 2])
    if (
        not isinstance(Cs, list)
        or not Cs
        or any(not isinstance(c, int) or c < 2 for c in Cs)
        or len(set(Cs)) != len(Cs)
    ):
        raise _err(path, "space.C_values", "must be a list of distinct integers >= 2, e.g. [8, 4, 2]")
    if cp["high"] > len(Cs):
        raise _err(path, "space.coarse_phases", f"high={cp['high']} needs at least that many C_values, have {len(Cs)}")
    if later is not None and cp["high"] < 2:
        raise _err(
            path,
            "space.later_method",
            "sets the method of the coarse phases after the first; give coarse_phases a high of 2 or more",
        )
    fr = body.get("phase_fraction", {"low": 0.1, "high": 0.3})
    if not (isinstance(fr, dict) and {"low", "high"} == set(fr) and 0 < fr["low"] < fr["high"] < 1):
        raise _err(path, "space.phase_fraction", "must be {low: .., high: ..} with 0 < low < high < 1")
    mcf = body.get("max_coarse_fraction", 0.8)
    if not 0 < mcf < 1:
        raise _err(path, "space.max_coarse_fraction", "must be between 0 and 1")
    sp.coarse_phases, sp.C_values = (cp["low"], cp["high"]), Cs
    sp.phase_fraction, sp.max_coarse_fraction = (fr["low"], fr["high"]), mcf
    if "controller" in body:
        sp.controllers = _controllers(path, body["controller"], float(epochs))
        ff = body.get("final_fraction", {"low": 0.4, "high": 0.6})
        if not (isinstance(ff, dict) and {"low", "high"} == set(ff) and 0 < ff["low"] <= ff["high"] < 1):
            raise _err(path, "space.final_fraction", "must be {low: .., high: ..} with 0 < low <= high < 1")
        sp.final_fraction = (ff["low"], ff["high"])  # coarse_phases low 0: the baseline is a trial too
    elif "final_fraction" in body:
        raise _err(path, "space.final_fraction", "belongs to a learned space; add 'controller'")
    sp.pbt = _pbt(path, doc.get("pbt"))


def _check_model(path, key: str, name) -> None:
    from ..models import get_family

    try:
        get_family(str(name))
    except ConfigError as e:
        raise _err(path, key, e.problem) from None


def _check_token_drop(path, key: str, objective: str, methods: list[str]) -> None:
    """A token-dropping method only with an objective that trains with dropped tokens (not SSAST pretraining)."""
    from ..objectives import get_objective

    drops = [m for m in methods if get_method(m).drops_tokens]
    if drops and not get_objective(objective).takes_token_drop:
        raise _err(
            path,
            key,
            f"the {objective} objective cannot train with dropped tokens ({drops[0]}); use a "
            f"method that shortens the input, e.g. fshift",
        )


def _controllers(path, spec, epochs: float) -> dict:
    """controller: {plateau: {patience: [1, 2], delta: {low: 0, high: 0.02}}, probe: {steps: [5, 10]}}."""
    from ..controllers import CONTROLLERS, make_controller

    if not isinstance(spec, dict) or not spec or set(spec) - set(CONTROLLERS.names()):
        raise _err(
            path, "space.controller", f"must map controllers ({', '.join(CONTROLLERS.names())}) to their settings"
        )
    out = {}
    for name, settings in spec.items():
        settings = settings or {}
        allowed = set(CONTROLLERS.get(name).options) - {"budget"}  # the budget is the space's epochs
        if not isinstance(settings, dict) or set(settings) - allowed:
            raise _err(path, f"space.controller.{name}", f"settings are {', '.join(sorted(allowed))}")
        out[name] = {}
        for k, v in settings.items():
            v = v if isinstance(v, (list, dict)) else [v]
            _check_hparam(path, f"controller.{name}.{k}", v)
            out[name][k] = v
            for x in _extremes(v):  # every value a trial may get makes a valid rule
                try:
                    make_controller(LEARNED, f"{name}:{k}={x}")
                except ConfigError as e:
                    raise _err(path, f"space.controller.{name}.{k}", e.problem) from None
    return out


def _pbt(path, spec) -> dict:
    """pbt: {interval: full-resolution epochs of FLOPs between perturbations, quantile, lower_C: probability
    that a member copying a better one also moves to the next finer C}."""
    spec = spec or {}
    if not isinstance(spec, dict) or set(spec) - set(PBT_KEYS):
        raise _err(path, "pbt", f"must be a mapping with keys {', '.join(PBT_KEYS)}")
    out = {**PBT_KEYS, **spec}
    if not (isinstance(out["interval"], (int, float)) and out["interval"] > 0):
        raise _err(path, "pbt.interval", "full-resolution epochs of compute between perturbations, > 0")
    if not (isinstance(out["quantile"], (int, float)) and 0 < out["quantile"] <= 0.5):
        raise _err(path, "pbt.quantile", "the bottom (and top) fraction of the population, in (0, 0.5]")
    if not (isinstance(out["lower_C"], (int, float)) and 0 <= out["lower_C"] <= 1):
        raise _err(path, "pbt.lower_C", "a probability in [0, 1]")
    return out


# searches made before the package was restructured pickled this module's classes as c2f_search.spaces
sys.modules.setdefault("c2f_search.spaces", sys.modules[__name__])
