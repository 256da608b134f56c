"""Files that must never be half-written: one ``atomic_write`` for every output, checkpoint files
that load without running code (``torch.load(weights_only=True)``), and one command at a time per
output folder (``folder_lock``)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import C2FError, CheckpointError

LOCK_FILE = ".c2f-search.lock"
HOST = socket.gethostname()
# a temporary file or folder names its writer, so that one left by a killed process can be told from one
# being written now (a feature cache is shared by every process on the machine)
_TEMP = re.compile(r"\.tmp-(\d+)@(.+?)~")


def temp_prefix() -> str:
    return f".tmp-{os.getpid()}@{HOST}~"  # the pid of this process, also in a forked worker


def atomic_write(path, content: bytes | str | Callable[[Path], object]) -> Path:
    """Write `path` so that a crash leaves the old file or the new one, never half of one.

    `content` is bytes, text, or a function that writes a given temporary path (for
    libraries that want a path: Parquet, matplotlib, Arrow IPC, torch.save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{temp_prefix()}{path.name}-", suffix=path.suffix)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_temporary(path) -> bool:
    return Path(path).name.startswith(".tmp-")


def remove_stale_temporaries(*folders) -> None:
    """Delete the temporary files and folders that a killed writer on this machine left in `folders`
    (a full-size checkpoint for each SIGKILL during a checkpoint write); those of live writers stay."""
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for p in Path(folder).iterdir():
            m = _TEMP.match(p.name)
            if m and m.group(2) == HOST and not _alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder, what: str, command: str):
    """Hold `folder` for one command: no other c2f-search command writes there until this one ends.

    The lock is a POSIX record lock on ``DIR/.c2f-search.lock`` (``fcntl.lockf``): the kernel releases it
    when the process ends, however it ends, so a lock left by a killed process never blocks, and it also
    works on NFS. The file names the holder (pid, host, command), for the one-line refusal. Folders this
    call creates are removed again if nothing else was written to them. `what` names the folder as the
    user gave it (``--out runs/x``)."""
    import fcntl
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise C2FError(f"{what}: is a file; give a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise C2FError(_held(path, what)) from None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed the file as it ended: lock the new one
    except OSError as e:
        _remove_empty(created)
        raise C2FError(f"{what}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": HOST, "command": command,
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting command then locks a new file
        os.close(fd)
        _remove_empty(created)


def _held(path: Path, what: str) -> str:
    try:
        h = json.loads(path.read_text())
    except (OSError, ValueError):  # the holder has not written its name yet
        return f"{what}: in use by another c2f-search command; wait for it to end or choose another folder"
    where = "this machine" if h["host"] == HOST else f"host {h['host']}"
    line = (f"{what}: in use by c2f-search {h['command']} (pid {h['pid']} on {where}, since {h['since']}); wait "
            f"for it to end or choose another folder")
    if h["host"] != HOST:
        line += f"; if it no longer runs there, delete {path}"
    return line


def _remove_empty(folders) -> None:
    for p in folders:  # innermost first
        try:
            p.rmdir()
        except OSError:
            return
