"""A search's rows: every report of every trial, read back from Tune's experiment folder (local, a shared
filesystem or a URI, through pyarrow filesystems), one row per (trial, step), with its status."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from ..errors import NoResults, ScheduleError
from ..layout import SearchDir
from ..schedule import record_schedule
from ..schema import RECORD_FIELDS, ROW_FIELDS, ROW_SCHEMA, row_table
from ..settings import SearchSettings

ROW_COLUMNS = list(ROW_FIELDS)


# Tune's status of a trial that has not ended: it runs, or waits (an interrupted search: --resume continues it)
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")


STATUSES = ("finished", "pruned", "running", "error")


def search_settings(search_dir):
    """The settings of the search in `search_dir`; None for a folder without them (a target's folder)."""
    return SearchSettings.load(search_dir) if SearchDir(search_dir).is_search() else None


def experiment_location(search_dir, filesystem=None, name="search"):
    """(pyarrow filesystem, path) of a Tune experiment (``search`` or ``confirm``) of a search folder.

    The storage chosen at search time (``--storage`` URI, recorded in DIR/search.json) wins;
    a filesystem object given here is used with the path as it is.
    """
    import pyarrow.fs as pafs

    if filesystem is not None:
        return filesystem, f"{str(search_dir).rstrip('/')}/{name}"
    settings = search_settings(search_dir)
    storage = settings.storage if settings else None
    if storage:
        fs, root = pafs.FileSystem.from_uri(storage)
        return fs, f"{root.rstrip('/')}/{name}"
    return pafs.LocalFileSystem(), str(Path(search_dir).resolve() / name)


def load_rows(search_dir, filesystem=None, name="search") -> pa.Table:
    """Every report of every trial, one row per (trial, step), last write wins. Reads local
    folders, shared filesystems and URIs (s3://, gs://) alike through pyarrow filesystems."""
    import pyarrow.fs as pafs

    fs, root = experiment_location(search_dir, filesystem, name)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise NoResults(f"{search_dir}: no {name} results (expected {root}); run 'c2f-search {name}' first")
    rows, failed, unreported, states = {}, [], [], _tune_states(fs, root)
    for t in sorted(fs.get_file_info(pafs.FileSelector(root)), key=lambda i: i.path):
        if t.type != pafs.FileType.Directory:
            continue
        names = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(t.path))}
        if "error.txt" in names:
            failed.append((names["error.txt"].mtime, t.path))
        # Tune appends to error.txt at every failure, also one it retried: its state says whether the trial
        # ended in error; the files decide only where there is no state
        state = next((v["status"] for k, v in states.items() if f"_{k}_" in t.base_name), None)
        errored = state == "ERROR" if state else ("error.txt" in names or "error.pkl" in names)
        if "result.json" not in names:
            if errored:
                unreported.append(t.base_name)
            continue
        status = "error" if errored else None
        with fs.open_input_stream(f"{t.path}/result.json") as f:
            lines = f.read().decode().splitlines()
        trial_rows = []
        if "progress.csv" in names:  # first: where result.json has the same report, its row wins below
            reports, config = _csv_reports(fs, t.path, names)
            trial_rows += [_row(r, t.path, names, t.base_name, config) for r in reports]
        for line in lines:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if "val_metric" in r:
                config = json.dumps(r["config"], sort_keys=True) if "config" in r else None
                trial_rows.append(_row(r, t.path, names, t.base_name, config))
        if not trial_rows and errored:
            unreported.append(t.base_name)
        done = any(x["schedule_done"] for x in trial_rows)
        last = states.get(trial_rows[0]["trial_id"], {}).get("last_result") or {} if trial_rows else {}
        if not done and last.get("schedule_done") and "val_metric" in last:
            # the report that ended the schedule, which result.json and progress.csv can lose when a PBT member
            # restarts after copying another; Tune's experiment state keeps each trial's last report
            config = json.dumps(last["config"], sort_keys=True) if "config" in last else None
            trial_rows.append(_row(last, t.path, names, t.base_name, config))
            done = True
        for x in trial_rows:
            unfinished = states.get(x["trial_id"], {}).get("status") in UNFINISHED
            x["status"] = "finished" if done else (status or ("running" if unfinished else "pruned"))
            # the averaged model and a pretraining trial's fine-tune share the last step: rows of their own
            key = (x["trial_id"], x["step"], bool(x["averaged"]), x["metric_name"])
            # a PBT member that copied another can report a step its dropped lineage reported too: the row that
            # ends the schedule is the one that stands
            if not (key in rows and rows[key]["schedule_done"] and not x["schedule_done"]):
                rows[key] = x
    if not rows and failed:
        path = min(failed)[1]
        raise NoResults(
            f"{search_dir}: every trial of the {name} failed before its first report, the first with: "
            f"{trial_error(fs, path)} (traceback: {path}/error.txt)"
        )
    if not rows:
        raise NoResults(f"{search_dir}: the {name} has no reported results yet")
    ordered = sorted(rows.values(), key=lambda x: (str(x["trial_id"]), x["step"] or 0))
    if name == "search" and filesystem is None and SearchDir(search_dir).warm_start.is_file():
        import pyarrow.parquet as pq  # the trials --warm-start imported, as they were read then

        ordered += pq.read_table(SearchDir(search_dir).warm_start).to_pylist()
    try:
        table = row_table(with_schedule_columns(ordered, root))
        # trials that failed before their first report have no row: counted from here
        return table.replace_schema_metadata({"failed_unreported": json.dumps(len(unreported))})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise NoResults(f"{root}: a trial's results are not c2f-search reports ({str(e).splitlines()[0]})") from None


def with_schedule_columns(rows: list[dict], where="rows") -> list[dict]:
    """`rows` with what their schedule says, each schedule text parsed once: ``is_baseline``, ``final_C`` (a
    learned run may skip phases, so its final phase is known by C) and ``full_model`` (a checkpoint of C = 1,
    or of a phase that drops tokens, whose grid and weights are the full model's)."""
    from ..compress import get_method

    parsed: dict[str, object] = {}
    for r in rows:
        text = r["schedule"]
        if text not in parsed:
            try:
                parsed[text] = record_schedule(text)
            except (ScheduleError, AttributeError) as e:
                raise NoResults(
                    f"{where}: trial {r['trial_id']} reports the schedule {text!r}, which is not one ({e})"
                ) from None
        s = parsed[text]
        r.update(
            is_baseline=s.is_baseline,
            final_C=s.phases[-1].C,
            full_model=r["C"] == 1 or r["C"] in s.Cs and get_method(s.method_at(r["C"])).drops_tokens,
        )
    return rows


def _tune_states(fs, root: str) -> dict[str, dict]:
    """{trial id: {status, last_result}} from the newest experiment state Tune saved ({} when there is none)."""
    import pyarrow.fs as pafs

    saved = sorted(
        i.path
        for i in fs.get_file_info(pafs.FileSelector(root))
        if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")
    )
    if not saved:
        return {}
    try:
        with fs.open_input_stream(saved[-1]) as f:
            data = json.loads(f.read())["trial_data"]
        out = {}
        for t in data:
            trial = json.loads(t[0]) if isinstance(t[0], str) else t[0]
            meta = json.loads(t[1]) if len(t) > 1 and isinstance(t[1], str) else (t[1] if len(t) > 1 else {})
            out[trial["trial_id"]] = {"status": trial["status"], "last_result": (meta or {}).get("last_result")}
        return out
    except (ValueError, KeyError, TypeError, IndexError, OSError):  # Tune's own file: without it, no status
        return {}


def trial_error(fs, path: str) -> str:
    """A failed trial's error in one line, from Tune's error.txt in its folder: the last line of the
    traceback, without the type for an error of c2f-search's own (its message says it all)."""
    with fs.open_input_stream(f"{path}/error.txt") as f:
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    last = lines[-1] if lines else "no error text"
    kind, sep, message = last.partition(": ")
    if sep and re.fullmatch(r"[\w.]+", kind):
        return message if kind.startswith("c2f_search.") else f"{kind.rsplit('.', 1)[-1]}: {message}"
    return last


def _row(r: dict, path: str, names, dir_name: str, config: str | None) -> dict:
    """One row of `load_rows` from one Tune report."""
    ck = r.get("checkpoint_dir_name")
    return {
        **{k: r.get(k) for k in RECORD_FIELDS},
        "trial_id": r.get("trial_id") or dir_name,
        "checkpoint_path": f"{path}/{ck}" if ck and ck in names else None,
        "lr": r.get("lr"),
        "batch_size": r.get("batch_size"),
        "seed": r.get("seed"),
        "config": config,
        "model": r.get("model"),
    }


def _csv_reports(fs, path: str, names) -> tuple[list[dict], str | None]:
    """The reports in progress.csv, typed, and the trial's current config (params.json). They cover those
    result.json lost: when a PBT member restarts after an exploit, Tune's JSON logger copies result.json
    back from storage and drops the reports not yet synced there; its CSV logger keeps them."""
    import csv
    import io

    config = None
    if "params.json" in names:
        with fs.open_input_stream(f"{path}/params.json") as f:
            config = json.dumps(json.loads(f.read().decode()), sort_keys=True)
    with fs.open_input_stream(f"{path}/progress.csv") as f:
        table = csv.DictReader(io.StringIO(f.read().decode()))
        types = {fld.name: fld.type for fld in ROW_SCHEMA}
        reports = [
            {k: _csv_value(v, types[k]) if k in types else v for k, v in r.items()}
            for r in table
            if r.get("val_metric")
        ]
    return reports, config


def _csv_value(v: str | None, typ):
    if v is None or v == "":
        return None
    if pa.types.is_boolean(typ):
        return v == "True"
    if pa.types.is_integer(typ):
        return int(float(v))
    if pa.types.is_floating(typ):
        return float(v)
    return v


def by_trial(R: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped per trial, in step order."""
    out: dict[str, list[dict]] = {}
    for r in sorted(R, key=lambda r: (r["trial_id"], r["step"])):
        out.setdefault(r["trial_id"], []).append(r)
    return out
