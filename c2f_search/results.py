"""Atomic table output through pyarrow (Parquet, CSV or JSON by extension)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import C2FError
from .io import atomic_write


def write_table(table: pa.Table, path) -> Path:
    """Write `table` to `path` atomically; the format follows the suffix (.parquet, .csv, .json)."""
    path = Path(path)
    writers = {".parquet": lambda p: pq.write_table(table, p), ".csv": lambda p: pacsv.write_csv(table, p),
               ".json": lambda p: Path(p).write_text(json.dumps(table.to_pylist(), indent=1, default=str))}
    if path.suffix not in writers:
        raise C2FError(f"{path}: use a .parquet, .csv or .json file name")
    return atomic_write(path, writers[path.suffix])
