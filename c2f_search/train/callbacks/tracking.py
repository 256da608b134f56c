"""Experiment trackers (``--log tensorboard|mlflow[=URI]|wandb[=PROJECT]``): what a tracker is given as, its
check before anything runs, the parameters a run or trial is logged with, and ``Tracking``, the callback that
writes a ``Run`` (``train``, ``pretrain``) to them. A search's trials go through Ray Tune's own logger callbacks
(``search/trackers.py``). A tracker that fails mid-run warns once and is dropped: c2f-search's own files are the
record."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import C2FError
from ...schedule import parse_schedule
from .base import Callback

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # kind -> the module it needs
EXTRA = "pip install 'c2f-search[track]'"
EXPERIMENT = "c2f-search"  # MLflow's experiment and W&B's project, unless given (MLFLOW_EXPERIMENT_NAME, =PROJECT)


@dataclass(frozen=True)
class Tracker:
    """One ``--log`` value: the tracker's kind and its target (MLflow's tracking URI, W&B's project)."""

    kind: str
    target: str | None = None

    @classmethod
    def parse(cls, text: str) -> Tracker:
        kind, _, target = text.partition("=")
        if kind not in TRACKERS:
            raise ValueError(f"{text!r}: not a tracker; give tensorboard, mlflow[=URI] or wandb[=PROJECT]")
        if kind == "tensorboard" and target:
            raise ValueError(f"{text!r}: TensorBoard's event files go into the run's folder; give --log tensorboard")
        if "=" in text and not target:
            raise ValueError(f"{text!r}: nothing after '='; give {kind}=... or {kind} alone")
        return cls(kind, target or None)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return self.kind + (f"={self.target}" if self.target else "")


def resolve(trackers: list[Tracker], out: Path) -> list[Tracker]:
    """Each tracker with its default target: MLflow in `out`'s ``mlruns/mlflow.db`` (MLflow 3 keeps its file
    store in maintenance and refuses it by default, so SQLite), W&B's project."""
    out = Path(out).resolve()
    resolved = []
    for t in dict.fromkeys(trackers):  # each once
        if t.kind == "mlflow" and not t.target:
            t = Tracker("mlflow", f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
        elif t.kind == "wandb" and not t.target:
            t = Tracker("wandb", EXPERIMENT)
        resolved.append(t)
    return resolved


def check(trackers: list[Tracker]) -> None:
    """Before anything runs: each tracker's package installed, MLflow's URI well formed and its server reachable;
    W&B offline unless the user has logged in. One line naming the fix, else nothing."""
    import importlib

    for t in trackers:
        try:
            importlib.import_module(TRACKERS[t.kind])
        except ImportError:
            raise C2FError(f"--log {t.kind}: the package {TRACKERS[t.kind]!r} is not installed; {EXTRA}") from None
        if t.kind == "mlflow":
            _check_mlflow(t)
        if t.kind == "wandb":
            wandb_mode()


def _check_mlflow(t: Tracker) -> None:
    from urllib.parse import urlparse

    url = urlparse(t.target)
    if url.scheme not in ("file", "sqlite", "http", "https", "postgresql", "mysql", "databricks", ""):
        raise C2FError(
            f"--log {t}: {url.scheme!r} is not a tracking URI MLflow reads; give sqlite:///PATH.db, "
            f"http(s)://HOST:PORT, or a database URI"
        )
    if url.scheme in ("", "file", "sqlite"):  # local: nothing to reach, and nothing is written before the run
        if url.scheme == "sqlite" and not url.path.startswith("/"):
            raise C2FError(f"--log {t}: not a SQLite URI; give sqlite:////abs/path.db or sqlite:///rel/path.db")
        path = sqlite_path(t.target) or Path(url.path if url.scheme else t.target)
        folder = next((p for p in (path, *path.parents) if p.exists()), None)
        if folder is None or (folder != path and not folder.is_dir()) or not os.access(folder, os.W_OK):
            raise C2FError(f"--log {t}: {folder or path} cannot be written; give a writable place")
        if url.scheme == "sqlite":
            return
    # MLflow 3 refuses a file store (a folder) unless MLFLOW_ALLOW_FILE_STORE is set: it says so before writing
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not after minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(t.target).search_experiments(max_results=1)
    except Exception as e:  # mlflow raises MlflowException, requests' errors, SQLAlchemy's ... for a bad target
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fix = "check the URI and the server" if url.scheme.startswith("http") else "give sqlite:///PATH.db"
        raise C2FError(f"--log {t}: MLflow cannot use it ({first[:200]}); {fix}") from None


def wandb_mode() -> str:
    """W&B's mode: online where the user has logged in (an API key in the environment or in ~/.netrc),
    offline otherwise (runs stay in a local folder, ``wandb sync`` uploads them later)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    key = os.environ.get("WANDB_API_KEY") or _netrc_key()
    mode = "online" if key else "offline"
    os.environ["WANDB_MODE"] = mode  # Ray's W&B actors read it too
    return mode


def _netrc_key() -> str | None:
    """The API key that ``wandb login`` saved in ~/.netrc (or $NETRC) for W&B's host, if any."""
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one W&B did not write: not logged in
        return None
    return entry[2] if entry else None


def schedule_params(schedule: str) -> dict:
    """A schedule as a tracker's parameters: the text, its method(s), its C and epochs per phase."""
    try:
        s = parse_schedule(schedule)
    except C2FError:
        return {"schedule": schedule}
    return {
        "schedule": str(s),
        "method": s.label,
        "C_per_phase": ",".join(str(p.C) for p in s.phases),
        "epochs_per_phase": ",".join("auto" if p.epochs is None else f"{p.epochs:g}" for p in s.phases),
        "phases": len(s.phases),
    }


def numeric(record: dict) -> dict:
    """The record's finite numbers (booleans as 0/1): what a tracker plots."""
    out = {}
    for k, v in record.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = v
    return out


class Tracking(Callback):
    """Writes a ``Run`` to its trackers: the schedule and settings as parameters when it starts, every record's
    numbers as metrics at its step, its status at the end. Stateful: a resumed run continues the same MLflow
    run. A tracker that raises warns once and is dropped; the run goes on."""

    state_key = "tracking"

    def __init__(self, trackers: list[Tracker], out: Path, name: str, params: dict):
        self.trackers, self.out, self.name, self.params = list(trackers), Path(out), name, params
        self.writers, self.mlflow_run = {}, None

    def state_dict(self) -> dict:
        return {"mlflow_run": self.mlflow_run}

    def load_state_dict(self, state):
        self.mlflow_run = (state or {}).get("mlflow_run")

    def _guarded(self, kind: str, what: str, fn) -> None:
        if kind not in self.writers and what != "start":
            return
        try:
            fn()
        except Exception as e:  # a tracker's failure never stops training
            warnings.warn(f"--log {kind}: {what} failed ({type(e).__name__}: {e}); not logging there any more",
                          stacklevel=2)  # fmt: skip
            self.writers.pop(kind, None)

    def on_fit_start(self, run):
        for t in self.trackers:
            self._guarded(t.kind, "start", lambda t=t: self._start(t))

    def _start(self, t: Tracker):
        params = {**self.params, **schedule_params(self.params.get("schedule", ""))}
        if t.kind == "tensorboard":
            from tensorboardX import SummaryWriter

            w = SummaryWriter(str(self.out / "tensorboard"))
            w.add_text("params", "\n".join(f"{k}: {v}" for k, v in params.items()))
        elif t.kind == "mlflow":
            from mlflow.tracking import MlflowClient

            client = MlflowClient(t.target)
            if self.mlflow_run is None:
                exp = experiment(t.target)
                self.mlflow_run = client.create_run(
                    exp, run_name=self.name, tags={"c2f_search.out": str(self.out)}
                ).info.run_id
                for k, v in params.items():
                    client.log_param(self.mlflow_run, k, v)
            w = client
        else:
            import wandb

            w = wandb.init(project=t.target, name=self.name, config=params, dir=str(self.out), mode=wandb_mode(),
                           id=None, reinit="create_new")  # fmt: skip
        self.writers[t.kind] = w

    def on_eval_end(self, run, record):
        values, step = numeric(record), int(record["step"])
        if "tensorboard" in self.writers:
            w = self.writers["tensorboard"]
            self._guarded("tensorboard", "logging", lambda: [w.add_scalar(k, v, step) for k, v in values.items()])
        if "mlflow" in self.writers:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
            self._guarded(
                "mlflow", "logging", lambda: self.writers["mlflow"].log_batch(self.mlflow_run, metrics=metrics)
            )
        if "wandb" in self.writers:
            self._guarded("wandb", "logging", lambda: self.writers["wandb"].log(values, step=step))

    def on_fit_end(self, run):
        self.close("FINISHED")

    def close(self, status: str) -> None:
        """End every tracker's run with `status` (FINISHED, FAILED or KILLED)."""
        if "tensorboard" in self.writers:
            self._guarded("tensorboard", "closing", lambda: self.writers["tensorboard"].close())
        if "mlflow" in self.writers:
            self._guarded("mlflow", "closing", lambda: self.writers["mlflow"].set_terminated(self.mlflow_run, status))
        if "wandb" in self.writers:
            self._guarded(
                "wandb", "closing", lambda: self.writers["wandb"].finish(exit_code=0 if status == "FINISHED" else 1)
            )
        self.writers = {}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:///rel`` is relative, ``sqlite:////abs`` absolute)."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def experiment(uri: str) -> str:
    """The id of MLflow's experiment for c2f-search's runs (MLFLOW_EXPERIMENT_NAME, else 'c2f-search'), made if
    missing. With a local SQLite database, the artifacts go beside it, not into the working directory."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    where = (db.parent.resolve() / "artifacts").as_uri() if db is not None else None
    return client.create_experiment(name, artifact_location=where)
