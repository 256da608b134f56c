"""The architecture's contracts: the layers by folder, one-way imports, no import circle, a config that
imports only errors and the schedule, a core that runs without Ray, and nothing outside train/run.py reading
Run's private parts (docs/architecture.md)."""

import ast as pyast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY_DATA

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
        (
            "schedule",
            "schedule_file",
            "config",
            "validate",
            "layout",
            "compress",
            "models",
            "objectives",
            "controllers",
            "recipes",
        ),
    ),
    ("data", ("data",)),
    ("settings of runs and searches", ("settings",)),
    ("the phase loop", ("train", "lightning_callback")),
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


@pytest.mark.slow
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
