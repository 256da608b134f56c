"""One record schema: what ``Run`` yields at every evaluation, what the trainable reports, what the
results loader reads back and what the Pareto export and ``metrics.parquet`` write."""
from __future__ import annotations

import pyarrow as pa

RECORD_SCHEMA = pa.schema([
    ("schedule", pa.string()),        # the run's schedule text
    ("method", pa.string()),
    ("phase", pa.int64()),            # 1-based phase actually trained
    ("C", pa.int64()),
    ("epoch", pa.float64()),          # epochs of data seen (fractional at phase ends)
    ("step", pa.int64()),             # optimizer steps so far
    ("train_loss", pa.float64()),     # mean training loss since the previous record
    ("val_metric", pa.float64()),
    ("metric_name", pa.string()),     # accuracy or mAP
    ("train_flops", pa.float64()),    # cumulative, forward + backward
    ("eval_flops", pa.float64()),     # cumulative
    ("train_time_s", pa.float64()),   # cumulative, device-synchronised: training steps and their input waits
    ("wall_time_s", pa.float64()),    # cumulative, evaluation and transitions included
    ("phase_train_time_s", pa.float64()),  # train_time_s of this record's phase so far
    ("samples_per_s", pa.float64()),  # training samples per second since the previous record
    ("mfu", pa.float64()),            # training FLOP/s since the previous record over the device's peak; null if unknown
    ("precision", pa.string()),       # fp32, tf32, bf16 or fp16, as resolved for the device
    ("device", pa.string()),          # cpu, or the CUDA device's name
    ("phase_end", pa.bool_()),        # the phase ended at this record
    ("schedule_done", pa.bool_()),    # the run ended at this record
    ("target_reached", pa.bool_()),   # budget mode: a final-phase metric reached --metric-target
])
RECORD_FIELDS = tuple(RECORD_SCHEMA.names)

# a search's rows: one record of one trial, plus where it stands and what it searched
ROW_SCHEMA = pa.schema([("trial_id", pa.string()), *RECORD_SCHEMA,
                        ("status", pa.string()),           # finished, pruned or error
                        ("checkpoint_path", pa.string()),  # this row's checkpoint, if kept
                        ("lr", pa.float64()), ("batch_size", pa.int64())])
ROW_FIELDS = tuple(ROW_SCHEMA.names)


def record_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in RECORD_FIELDS} for r in records], schema=RECORD_SCHEMA)


def row_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in ROW_FIELDS} for r in rows], schema=ROW_SCHEMA)
