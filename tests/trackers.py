"""Reading trackers' own files back, as their tools do: W&B's offline run log (a LevelDB log of protobuf
records, the format `wandb sync` uploads), MLflow's runs, TensorBoard's event files."""

import json
import struct
from pathlib import Path


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows (one per `log` call) of a W&B run file (``run-ID.wandb``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, rows = Path(run_file).read_bytes(), []
    assert raw[:4] == b":W&B", f"{run_file} is not a W&B run file"
    pos, block, chunk = 7, 32768, b""  # a 7-byte file header, then 32 KiB blocks of records
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        chunk, pos = chunk + raw[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            chunk = b""
    return rows


def scalars(folder: Path) -> dict[str, list[float]]:
    """Every scalar tag of the TensorBoard event files in `folder`, read by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("c2f-search")
    assert exp is not None, f"no 'c2f-search' experiment at {uri}"
    return client.search_runs([exp.experiment_id])
