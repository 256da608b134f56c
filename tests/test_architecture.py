"""The architecture's contracts: layers, one-way imports and no import circle, a config that imports
nothing of the core, nothing outside train.py reading Run's private parts, a method, a family, a
controller, an objective and a callback each added from outside the package (tests/toys/), forking
from a shared prefix, and runs that own their RNG."""

import ast as pyast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from c2f_search import FixedSchedule, Geometry, Run, TrainConfig, fork_point, parse_schedule
from c2f_search.errors import CheckpointError, ConfigError, ScheduleError
from c2f_search.validate import validate

from .conftest import TINY_DATA, last_state

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "c2f_search"


# ---------------------------------------------------------------------------------------- layers
def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the project modules a file imports, at any depth (lazy imports included)."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in pyast.walk(pyast.parse(path.read_text())):
        if isinstance(node, pyast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, pyast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")
                base = ".".join(up[: len(up) - node.level + 1] + ([base] if base else []))
            # `from PKG import MOD` imports the module MOD; `from MOD import name` imports MOD
            out |= {f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names}
    return {m for m in out if m.split(".")[0] in ("c2f_search", "trainables", "ray")}


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


# the layers, lowest first: a module imports only from its own layer or those below it. Inside the package
# a layer is a set of folders (and top-level modules); trainables/, the Ray side (search/) and the command
# line (cli/) sit on top. c2f_search/__init__.py only re-exports the public API.
LAYERS = (
    ("foundation", ("errors", "registry", "files", "geometry", "schema")),
    (
        "contracts and registries",
        ("schedule", "config", "validate", "layout", "compress", "models", "objectives", "controllers", "recipes"),
    ),
    ("data", ("data",)),
    ("settings of runs and searches", ("settings",)),
    ("the phase loop", ("train",)),
    ("results", ("analysis",)),
    ("Ray Tune trainables", ("trainables",)),
    ("search (Ray Tune + Optuna)", ("search",)),
    ("command line", ("cli",)),
)


def _layer(mod: str) -> int:
    parts = mod.split(".")
    room = parts[0] if parts[0] == "trainables" else parts[1] if len(parts) > 1 else None
    for k, (_, rooms) in enumerate(LAYERS):
        if room in rooms:
            return k
    raise AssertionError(f"{mod} belongs to no layer: add its folder to LAYERS")


def test_imports_point_one_way():
    files = list(PKG.rglob("*.py")) + list((ROOT / "trainables").rglob("*.py"))
    rooms = {
        p.stem if p.is_file() else p.name
        for p in PKG.iterdir()
        if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())
    }
    assert rooms == {r for _, rs in LAYERS for r in rs} - {"trainables"}, "LAYERS must name every folder and module"
    for f in files:
        mod = _module_name(f)
        if mod == "c2f_search":  # the public API re-exports from every layer
            continue
        for imp in _imports(f):
            if imp.split(".")[0] == "ray":
                assert _layer(mod) in (6, 7), f"{mod} imports Ray; only trainables/ and c2f_search.search may"
                continue
            if imp == "c2f_search":  # a name the public API re-exports
                continue
            assert _layer(imp) <= _layer(mod), (
                f"{mod} ({LAYERS[_layer(mod)][0]}) imports {imp} ({LAYERS[_layer(imp)][0]}), a layer above it"
            )


def test_core_runs_with_ray_unimportable(tmp_path):
    """Every core module imports, and `train` runs, with `import ray` failing."""
    code = f"""
import sys, importlib, pkgutil
sys.modules["ray"] = None  # any `import ray` now raises ImportError
import c2f_search
names = [m.name for m in pkgutil.walk_packages(c2f_search.__path__, "c2f_search.")
         if not m.name.startswith("c2f_search.search.") and not m.name.endswith(".__main__")]
for n in names:
    importlib.import_module(n)
assert "trainables" not in sys.modules
from c2f_search.cli import main
rc = main(["train", "--data", "{TINY_DATA}", "--schedule", "avgpool:2x0.5,1x0.5", "--depth", "1",
           "--batch-size", "8", "--out", r"{tmp_path / "run"}", "--no-progress"])
print("OK", len(names), rc)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]
    assert p.stdout.split()[-1] == "0" and int(p.stdout.split()[-2]) > 15
    assert (tmp_path / "run" / "metrics.parquet").exists()


# ----------------------------------------------------------------------------------- import graph
def _graph() -> dict[str, set[str]]:
    """Module -> the c2f_search modules it imports, at any depth (imports inside functions included)."""
    mods = {_module_name(f): f for f in PKG.rglob("*.py")}
    graph = {}
    for mod, f in mods.items():
        # `from . import name` names a submodule or an attribute of the package: keep the modules only
        graph[mod] = {i for i in _imports(f) if i in mods and i != mod}
    return graph


def test_no_import_circle_inside_the_package():
    graph, state, path = _graph(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert len(graph) > 40  # the whole package was read


def test_the_config_imports_only_errors_and_the_schedule():
    assert _graph()["c2f_search.config"] == {"c2f_search.errors", "c2f_search.schedule"}


def test_no_module_reads_a_private_attribute_of_run():
    tree = pyast.parse((PKG / "train" / "run.py").read_text())
    run = next(n for n in tree.body if isinstance(n, pyast.ClassDef) and n.name == "Run")
    private = {
        n.name
        for n in run.body
        if isinstance(n, pyast.FunctionDef) and n.name.startswith("_") and not n.name.startswith("__")
    }
    private |= {
        t.attr
        for n in pyast.walk(run)
        if isinstance(n, pyast.Assign)
        for t in n.targets
        if isinstance(t, pyast.Attribute) and t.attr.startswith("_")
    }
    assert {"_act", "_train_until"} <= private
    files = [f for d in ("c2f_search", "trainables", "bench", "tests") for f in (ROOT / d).rglob("*.py")]
    bad = [
        f"{f.relative_to(ROOT)}:{n.lineno} .{n.attr}"
        for f in files
        if f != PKG / "train" / "run.py"
        for n in pyast.walk(pyast.parse(f.read_text()))
        if isinstance(n, pyast.Attribute) and n.attr in private
    ]
    assert not bad, f"modules read private attributes of Run: {bad}"


# ------------------------------------------------------------------- pieces registered from outside
@pytest.fixture
def toy():
    """Import a toy module from tests/toys (again, so it registers itself); its registrations are undone
    after the test, so other tests see only the built-ins."""
    import importlib

    from c2f_search.compress import METHODS
    from c2f_search.controllers import CONTROLLERS
    from c2f_search.models import MODELS
    from c2f_search.objectives import OBJECTIVES

    registries = (METHODS, MODELS, CONTROLLERS, OBJECTIVES)
    before = {id(r): set(r.names()) for r in registries}

    def load(name):
        mod = importlib.import_module(f"tests.toys.{name}")
        return importlib.reload(mod)

    yield load
    for r in registries:
        for name in set(r.names()) - before[id(r)]:
            r.unregister(name)


def test_a_family_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_family")  # registers toy-net
    cfg = TrainConfig("maxpool:4x1,2x1,1x1", model="toy-net", batch_size=8, lr=1e-2, warmup_steps=0)
    run = Run(cfg, tiny_data, "cpu")
    recs = list(run.records())
    assert [r["C"] for r in recs] == [4, 2, 1] and recs[-1]["schedule_done"]
    assert run.model.time_embed.shape[-1] == 256 // 8 and run.model.geometry == Geometry(64, 256)
    flops = [b["train_flops"] - a["train_flops"] for a, b in zip([{"train_flops": 0}] + recs, recs)]
    assert flops[0] < flops[1] < flops[2]  # counted per phase by the same FlopCounterMode path
    with pytest.raises(Exception, match="multiple of 8|divide"):
        Run(TrainConfig("maxpool:64x1,1x1", model="toy-net"), tiny_data, "cpu")


def test_a_toy_is_gone_after_its_test():
    from c2f_search.models import list_models

    assert "toy-net" not in list_models()


def test_a_family_without_a_capability_is_refused_naming_both(tiny_data, tmp_path, toy):
    toy("toy_family")
    with pytest.raises(
        ScheduleError,
        match="toy-net .*does not support the compression method 'patch-pi': it needs "
        "a patch kernel stretched along time, which toy does not provide",
    ):
        Run(TrainConfig("patch-pi:2x1,1x1", model="toy-net"), tiny_data, "cpu")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "c2f_search.cli",
            "train",
            "--data",
            TINY_DATA,
            "--model",
            "cnn14-tiny",
            "--schedule",
            "patch-bl:2x1,1x1",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "cnn14-tiny" in p.stderr and "'patch-bl'" in p.stderr and not (tmp_path / "r").exists()


def _tiny(schedule, **kw):
    return TrainConfig(schedule, **{"model_kwargs": {"depth": 1}, "batch_size": 8, "lr": 3e-4, "warmup_steps": 2, **kw})


def test_a_method_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_method")  # registers toy-decimate
    run = Run(_tiny("toy-decimate:4x1,2x1,1x1", timem=32), tiny_data, "cpu")
    recs = run.fit()
    assert [r["C"] for r in recs] == [4, 2, 1] and [r["method"] for r in recs] == ["toy-decimate"] * 3
    assert run.model.token_grid == (4, 16)
    with pytest.raises(ScheduleError, match="unknown method 'toy-decimat'"):
        Run(_tiny("toy-decimat:2x1,1x1"), tiny_data, "cpu")


def test_a_controller_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_controller")  # registers toy-count
    run = Run(_tiny("avgpool:4xauto,2xauto,1x1", transition="toy-count:steps=3"), tiny_data, "cpu")
    run.fit()
    assert [(p["C"], p["steps"]) for p in run.phases] == [(4, 3), (2, 3), (1, 5)]
    assert run.phases[1]["reason"] == "counted 3 steps" and run.history[-1]["controller"] == "toy-count"
    with pytest.raises(ConfigError, match="'count=3' is not one of steps="):
        Run(_tiny("avgpool:4xauto,1x1", transition="toy-count:count=3"), tiny_data, "cpu")


def test_an_objective_registered_from_outside_trains_coarse_to_fine(tiny_data, toy):
    toy("toy_objective")  # registers toy-brier
    run = Run(_tiny("fshift:2x1,1x1", objective="toy-brier", lr=1e-3), tiny_data, "cpu")
    recs = run.fit()
    assert [r["C"] for r in recs] == [2, 1] and all(0 <= r["val_loss"] <= 2 for r in recs)
    assert recs[0]["train_loss"] != recs[1]["train_loss"] and 0 <= recs[-1]["val_metric"] <= 1
    with pytest.raises(ConfigError, match="objective: must be one of masked-patch, supervised, toy-brier"):
        validate(_tiny("none:1x1", objective="toy-brie"))


def test_a_callback_from_outside_sees_every_step_and_keeps_its_state(tiny_data):
    from .toys.toy_callback import StepsPerC

    cb = StepsPerC()
    run = Run(_tiny("avgpool:2x1,1x1"), tiny_data, "cpu", callbacks=[cb])
    it = run.records()
    next(it)  # the end of phase 1
    state = run.state_dict()
    assert (
        cb.steps == {"2": 5} and cb.phase_ends == [2] and state["callbacks"]["toy_steps_per_C"] == {"steps": {"2": 5}}
    )
    again = StepsPerC()
    resumed = Run(_tiny("avgpool:2x1,1x1"), tiny_data, "cpu", state=state, callbacks=[again])
    assert again.steps == {"2": 5}
    resumed.fit()
    assert again.steps == {"2": 5, "1": 5}


# --------------------------------------------------------------------------------------- forking
def _cfg(schedule, **kw):
    base = dict(model_kwargs={"depth": 1}, batch_size=8, lr=3e-4, warmup_steps=2, freqm=8, timem=32, mixup=0.5)
    return TrainConfig(schedule, **{**base, **kw})


def _metrics(records):
    return [
        (
            r["step"],
            r["C"],
            r["phase"],
            r["train_loss"],
            r["val_metric"],
            r["train_flops"],
            r["eval_flops"],
            r["phase_end"],
            r["schedule_done"],
            r["schedule"],
        )
        for r in records
    ]


def test_forked_runs_match_runs_from_scratch(tiny_data):
    """Three schedules share a prefix; each forked run's records equal its run from scratch."""
    a, b, c = "fshift:2x1,1x1", "fshift:2x1,1x2", "fshift:2x1.4,1x1.6"  # 5 steps per epoch
    scratch = {s: _metrics(Run(_cfg(s), tiny_data, "cpu").records()) for s in (a, b, c)}
    end_a = last_state(Run(_cfg(a), tiny_data, "cpu"))  # a's final state, step 10
    fork_b = Run(_cfg(b), tiny_data, "cpu", state=end_a)  # b goes on at C=1 from step 10
    rest_b = list(fork_b.records())
    assert _metrics(fork_b.history) == scratch[b] and rest_b and rest_b[0]["step"] == 15
    # c's first phase is longer (7 steps): it can take a's state at step 5, an epoch end of both
    assert fork_point(parse_schedule(a), parse_schedule(c), 5) == 5
    at5 = last_state(Run(_cfg(a), tiny_data, "cpu"), at_step=5)
    fork_c = Run(_cfg(c), tiny_data, "cpu", state=at5)
    list(fork_c.records())
    assert _metrics(fork_c.history) == scratch[c]
    assert fork_c.history[0]["phase_end"] is False  # a's phase ended at step 5, c's does not: relabelled
    with pytest.raises(CheckpointError, match="trained 5 steps|planned"):
        Run(_cfg(c), tiny_data, "cpu", state=end_a)  # a's phase 1 is not c's
    with pytest.raises(CheckpointError, match="lr"):
        Run(_cfg(b, lr=1e-3), tiny_data, "cpu", state=end_a)  # other hyperparameters: another trajectory


def test_fork_point_rules():
    s = parse_schedule
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x2,1x8"), 10) == 60  # all of the parent
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x3,1x3"), 10) == 20  # into the longer first phase
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x3,1x3"), 10, lr_needs_length=True) == 0
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:4x2,1x8"), 10, lr_needs_length=True) == 20
    assert fork_point(s("fshift:4x2,1x4"), s("avgpool:4x2,1x4"), 10) == 0  # another method
    assert fork_point(s("fshift:4x2,1x4"), s("fshift:2x2,1x4"), 10) == 0  # another C
    assert fork_point(s("fshift:4x1.5,1x4"), s("fshift:4x2,1x4"), 10) == 10  # last common epoch end
    assert fork_point(s("none:1x3"), s("none:1x5"), 7) == 21


def test_cosine_lr_forks_only_where_the_phase_length_agrees(tiny_data):
    a, b = "fshift:2x1,1x1", "fshift:2x1,1x2"
    at5 = last_state(Run(_cfg(a, lr_schedule="cosine"), tiny_data, "cpu"), at_step=5)
    end_a = last_state(Run(_cfg(a, lr_schedule="cosine"), tiny_data, "cpu"))
    scratch = _metrics(Run(_cfg(b, lr_schedule="cosine"), tiny_data, "cpu").records())
    fork = Run(_cfg(b, lr_schedule="cosine"), tiny_data, "cpu", state=at5)
    list(fork.records())
    assert _metrics(fork.history) == scratch
    with pytest.raises(CheckpointError, match="cosine"):
        Run(_cfg(b, lr_schedule="cosine"), tiny_data, "cpu", state=end_a)


# ------------------------------------------------------------------------------------------- RNG
_ONE_RUN = """
import json, sys
from c2f_search import Data, Run, TrainConfig
data = Data.from_specs("{data}")
cfg = TrainConfig(sys.argv[1], model_kwargs={{"depth": 1}}, batch_size=8, lr=3e-4, warmup_steps=2, freqm=8,
                  timem=32, mixup=0.5, seed=int(sys.argv[2]))
print(json.dumps([[r["step"], r["train_loss"], r["val_metric"]] for r in Run(cfg, data, "cpu").records()]))
"""


def test_two_runs_in_one_process_equal_two_processes(tiny_data, tmp_path):
    jobs = [("avgpool:2x1,1x1", 1), ("patch-pi:2x1,1x1", 2)]
    runs = [Run(_cfg(s, seed=seed), tiny_data, "cpu") for s, seed in jobs]
    torch.manual_seed(123)  # the process-wide RNG is neither used nor disturbed by the runs
    before = torch.get_rng_state()
    its = [r.records() for r in runs]
    together = [[], []]
    for _ in range(2):  # interleaved: each run's records alternate with the other's
        for k, it in enumerate(its):
            r = next(it)
            together[k].append([r["step"], r["train_loss"], r["val_metric"]])
    assert torch.equal(torch.get_rng_state(), before)
    script = tmp_path / "one.py"
    script.write_text(_ONE_RUN.format(data=TINY_DATA))
    for (s, seed), mine in zip(jobs, together):
        p = subprocess.run([sys.executable, str(script), s, str(seed)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(p.stdout.strip().splitlines()[-1]) == mine


# ---------------------------------------------------------------------------------- Table 1 Pool2
def test_coarse_only_ablation_trains_and_evaluates_at_its_own_C(tiny_data):
    run = Run(_cfg("avgpool:2x1,coarse-only", metric_target=0.0), tiny_data, "cpu")
    recs = list(run.records())
    assert [r["C"] for r in recs] == [2] and recs[0]["target_reached"]  # its final phase is C=2
    assert run.model.geometry == Geometry(64, 128)
    assert isinstance(run.controller, FixedSchedule) and run.controller.final_C() == 2
