"""Atomic table output through pyarrow (Parquet, CSV or JSON by extension)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def write_table(table: pa.Table, path) -> Path:
    """Write `table` to `path` atomically; the format follows the suffix (.parquet, .csv, .json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            pq.write_table(table, tmp)
        elif path.suffix == ".csv":
            pacsv.write_csv(table, tmp)
        elif path.suffix == ".json":
            Path(tmp).write_text(json.dumps(table.to_pylist(), indent=1, default=str))
        else:
            raise ValueError(f"{path}: use a .parquet, .csv or .json file name")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
