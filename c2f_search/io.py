"""Files that must never be half-written: one ``atomic_write`` for every output, and
checkpoint files that load without running code (``torch.load(weights_only=True)``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import CheckpointError


def atomic_write(path, content: bytes | str | Callable[[Path], object]) -> Path:
    """Write `path` so that a crash leaves the old file or the new one, never half of one.

    `content` is bytes, text, or a function that writes a given temporary path (for
    libraries that want a path: Parquet, matplotlib, Arrow IPC, torch.save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, path) -> Path:
    """Write a training state atomically. It holds only tensors and plain Python values, so
    ``load_checkpoint`` reads it with ``weights_only=True``."""
    import torch
    return atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path) -> dict:
    """Read a checkpoint without executing code from it: anything but tensors and plain values is refused."""
    import pickle
    import re
    import zipfile

    import torch
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: cannot be read, it is truncated or not a torch checkpoint")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # name only the global: torch's own text suggests allow-listing it, which is the unsafe way out
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it calls {found.group(1)}" if found else "it holds objects that are not tensors"
        raise CheckpointError(f"{path}: refused to load it, since loading would run code from it ({what}); "
                              f"c2f-search and timm checkpoints hold only tensors and plain values") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read, it is truncated or not a torch checkpoint "
                              f"({str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(state).__name__}, expected a dict)")
    return state
