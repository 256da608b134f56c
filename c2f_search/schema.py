"""One record schema: what ``Run`` yields at every evaluation, what the trainable reports, what the
results loader reads back and what the Pareto export and ``metrics.parquet`` write; ``write_table`` writes
any table atomically (Parquet, CSV or JSON by suffix)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import C2FError
from .files import atomic_write

RECORD_SCHEMA = pa.schema(
    [
        ("schedule", pa.string()),  # the run's schedule text (an adaptive one with its [transition])
        ("controller", pa.string()),  # fixed, plateau, probe, ...
        ("trained", pa.string()),  # the phases trained so far, as a fixed schedule that re-runs them
        ("method", pa.string()),
        ("phase", pa.int64()),  # 1-based phase actually trained
        ("C", pa.int64()),
        ("epoch", pa.float64()),  # epochs of data seen (fractional at phase ends)
        ("step", pa.int64()),  # optimizer steps so far
        ("train_loss", pa.float64()),  # mean training loss since the previous record
        ("val_loss", pa.float64()),
        ("val_metric", pa.float64()),
        ("metric_name", pa.string()),  # accuracy or mAP
        ("train_flops", pa.float64()),  # cumulative, forward + backward
        ("eval_flops", pa.float64()),  # cumulative
        (
            "controller_flops",
            pa.float64(),
        ),  # cumulative FLOPs a controller spent on itself (losing probes), in train_flops too
        ("train_time_s", pa.float64()),  # cumulative, device-synchronised: training steps and their input waits,
        # compilation and warm-up excluded
        ("compile_time_s", pa.float64()),  # cumulative: the compiling and warm-up steps of each compiled phase
        ("wall_time_s", pa.float64()),  # cumulative, evaluation and transitions included
        ("phase_train_time_s", pa.float64()),  # train_time_s of this record's phase so far
        ("samples_per_s", pa.float64()),  # training samples per second since the previous record
        ("mfu", pa.float64()),  # training FLOP/s since the previous record over the device's peak; null if unknown
        ("precision", pa.string()),  # fp32, tf32, bf16 or fp16, as resolved for the device
        ("device", pa.string()),  # cpu, or the CUDA device's name
        ("phase_end", pa.bool_()),  # the phase ended at this record
        ("schedule_done", pa.bool_()),  # the run ended at this record
        ("target_reached", pa.bool_()),  # budget mode: a final-phase metric reached --metric-target
        ("reason", pa.string()),  # at a phase end: why it ended
        ("averaged", pa.bool_()),  # the weight-averaged model (weight_averaging), after the last record
    ]
)
RECORD_FIELDS = tuple(RECORD_SCHEMA.names)

# a search's rows: one record of one trial, plus where it stands and what it searched
ROW_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        *RECORD_SCHEMA,
        ("status", pa.string()),  # finished, pruned, running or error
        ("checkpoint_path", pa.string()),  # this row's checkpoint, if kept
        ("lr", pa.float64()),
        ("batch_size", pa.int64()),
        ("seed", pa.int64()),  # the trial's training seed
        ("config", pa.string()),  # the trial's sampled config (JSON): what a re-run needs
        ("test_metric", pa.float64()),  # on the --test split, where evaluated (front points)
        ("model", pa.string()),  # the trial's model (a space may search it)
        # what the row's schedule says, read once by the loader (analysis.rows.load_rows):
        ("is_baseline", pa.bool_()),  # one phase at full resolution: the reference
        ("final_C", pa.int64()),  # the C of the schedule's last phase (1, or coarse-only's)
        ("full_model", pa.bool_()),
        ("warm_start", pa.string()),  # the earlier search a trial was imported from (--warm-start); else null
    ]
)  # its checkpoint is a full-resolution model
ROW_FIELDS = tuple(ROW_SCHEMA.names)
CHECKPOINT_FILE = "state.pt"  # the training state inside a trial's Tune checkpoint folder


def keep_checkpoint(history: list[dict], final_C: int) -> bool:
    """Whether the newest record's checkpoint may be needed after the search, so must never be rotated
    away: a phase end, or a final-phase (C = `final_C`) evaluation that beats every earlier one of that
    phase. The paper's selected epochs are of this kind: the earliest final-phase evaluation at or above
    the baseline's best beats all earlier ones, and so do the best final-phase epoch and the baseline's best."""
    r = history[-1]
    if r["phase_end"]:
        return True
    if r["C"] != final_C:
        return False
    earlier = [x["val_metric"] for x in history[:-1] if x["C"] == final_C]
    return all(r["val_metric"] > m for m in earlier)


def record_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in RECORD_FIELDS} for r in records], schema=RECORD_SCHEMA)


def row_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in ROW_FIELDS} for r in rows], schema=ROW_SCHEMA)


def write_table(table: pa.Table, path) -> Path:
    """Write `table` to `path` atomically; the format follows the suffix (.parquet, .csv, .json)."""
    path = Path(path)
    writers = {
        ".parquet": lambda p: pq.write_table(table, p),
        ".csv": lambda p: pacsv.write_csv(table, p),
        ".json": lambda p: Path(p).write_text(json.dumps(table.to_pylist(), indent=1, default=str)),
    }
    if path.suffix not in writers:
        raise C2FError(f"{path}: use a .parquet, .csv or .json file name")
    return atomic_write(path, writers[path.suffix])
