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
import types
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

from .errors import C2FError, CheckpointError, DataError, WriteError

JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a JSON object",
    list: "a list",
    type(None): "null",
}
FULL_BELOW = 1 << 20  # a write that fails with less than this free on its file system failed for lack of space
HOST = socket.gethostname()
# a temporary file or folder names its writer, so that one left by a killed process can be told from one
# being written now (a feature cache is shared by every process on the machine)
_TEMP = re.compile(r"\.tmp-(\d+)@(.+?)~")


def cache_root() -> Path:
    """c2f-search's cache folder on this node: $C2F_CACHE, else ~/.cache/c2f-search."""
    root = Path(os.environ.get("C2F_CACHE", Path.home() / ".cache" / "c2f-search"))
    if root.exists() and not root.is_dir():
        raise DataError(f"C2F_CACHE={root} is a file, not a folder; point $C2F_CACHE at a folder")
    return root


def temp_prefix() -> str:
    return f".tmp-{os.getpid()}@{HOST}~"  # the pid of this process, also in a forked worker


def atomic_write(path, content: bytes | str | Callable[[Path], object]) -> Path:
    """Write `path` so that a crash leaves the old file or the new one, never half of one.

    `content` is bytes, text, or a function that writes a given temporary path (for
    libraries that want a path: Parquet, matplotlib, Arrow IPC, torch.save). A write that fails for
    lack of disk space, or in a folder that cannot be written, is a ``WriteError`` naming the file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{temp_prefix()}{path.name}-", suffix=path.suffix)
        os.close(fd)
        tmp = Path(tmp)
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open would
        os.replace(tmp, path)
    except C2FError:
        raise
    except Exception as e:  # torch.save reports a full disk as a RuntimeError of its zip writer
        problem = write_problem(e, path)  # before the partial file goes: it holds the space
        if problem is None:
            raise
        raise WriteError(f"{path}: cannot write it ({problem[0]}); {problem[1]}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def check_writable(path, fix: str = "choose a writable folder") -> None:
    """A ``WriteError`` unless a file can be made where `path` goes (probed in its nearest existing folder
    with a temporary file that does not stay)."""
    path = Path(path)
    folder = next((p for p in path.parents if p.exists()), Path("/"))
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise WriteError(f"{path}: cannot write it ({e.strerror or e}); {fix}") from None


def write_problem(e: Exception, path: Path) -> tuple[str, str] | None:
    """(what a failed write ran into, the fix), in words, or None when it was not the file system."""
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("/"))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    code = getattr(e, "errno", None)  # None: a library's own error (torch's zip writer), so ask the disk
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and free is not None and free < FULL_BELOW):
        return (
            f"not enough disk space on the file system of {folder}, {(free or 0) / 2**20:.1f} MiB free",
            "free some space or write to another disk",
        )
    if isinstance(e, OSError):
        return str(e.strerror or e), "choose a writable folder"
    return None


def read_text(path, error: type[C2FError] = C2FError) -> str:
    """A text file as UTF-8 (a byte-order mark is dropped); a file in another encoding, or a binary one,
    is `error` naming the line of the first byte that is not UTF-8."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(
            f"{path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8; save the file as UTF-8 text"
        ) from None


def read_json(path, fields: dict | None = None, error: type[C2FError] = C2FError) -> dict:
    """A JSON object from `path`. `fields` maps a key to its type (``str | None``, ``dict``; a float
    takes an int too) or to a nested `fields` mapping; a key present with another type is `error`
    naming the file and the key."""
    try:
        doc = json.loads(read_text(path, error))
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e}); restore it or start again") from None
    _check_fields(path, doc, fields or {}, "", error)
    return doc


def _check_fields(path, doc, fields: dict, where: str, error) -> None:
    if not isinstance(doc, dict):
        raise error(
            f"{path}: {f'key {where!r} ' if where else ''}must be a JSON object, not "
            f"{json.dumps(doc)[:40]}; restore the file or start again"
        )
    for key, typ in fields.items():
        if key not in doc:
            continue
        name = f"{where}.{key}" if where else key
        if isinstance(typ, dict):
            _check_fields(path, doc[key], typ, name, error)
            continue
        allowed = tuple(get_args(typ)) if isinstance(typ, types.UnionType) else (typ,)
        allowed = tuple(type(None) if t is None else t for t in allowed)
        v = doc[key]
        ok = isinstance(v, allowed) and not (isinstance(v, bool) and bool not in allowed)
        if not ok and float in allowed and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            want = " or ".join(JSON_NAMES.get(t, t.__name__) for t in allowed)
            raise error(
                f"{path}: key {name!r} must be {want}, got {json.dumps(v)[:40]}; restore the file or start again"
            )


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
        raise CheckpointError(
            f"{path}: refused to load it, since loading would run code from it ({what}); "
            f"c2f-search and timm checkpoints hold only tensors and plain values"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot be read, it is truncated or not a torch checkpoint ({str(e).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(state).__name__}, expected a dict)")
    return state


def read_yaml(path, error: type[C2FError] = C2FError):
    """A YAML file, safe types only. A key given twice in one mapping is `error` naming the line and the
    key: plain YAML keeps the last one silently."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges keys on purpose
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise error(
                        f"{path}: line {line}: key {key!r} is given twice in one mapping (first on line "
                        f"{seen[key]}); keep one"
                    )
                seen[key] = line
            return super().construct_mapping(node, deep)

    try:
        return yaml.load(read_text(path, error), Loader=UniqueKeys)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({e})") from None


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
def folder_lock(lock, what: str, command: str):
    """Hold the folder of the file `lock` (``RunDir.lock``, ``SearchDir.lock``) for one command: no other
    c2f-search command writes there until this one ends.

    The lock is a POSIX record lock on that file (``fcntl.lockf``): the kernel releases it
    when the process ends, however it ends, so a lock left by a killed process never blocks, and it also
    works on NFS. The file names the holder (pid, host, command), for the one-line refusal. Folders this
    call creates are removed again if nothing else was written to them. `what` names the folder as the
    user gave it (``--out runs/x``)."""
    import fcntl

    path = Path(lock)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise C2FError(f"{what}: is a file; give a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
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
    holder = {"pid": os.getpid(), "host": HOST, "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
    except OSError as e:  # a full disk: no lock left behind, and the folder named with its free space
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(created)
        problem, fix = write_problem(e, path) or (str(e), "choose a writable folder")
        raise C2FError(f"{what}: cannot write its lock file {path.name} ({problem}); {fix}") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting command then locks a new file
        os.close(fd)
        _remove_empty(created)


@contextmanager
def reading_lock(lock, what: str):
    """Read the folder of the file `lock` while no c2f-search command writes there: a shared record lock on
    the lock file, taken only where one exists (a command holding the folder always has it), so a folder
    that is read-only to this user can still be read. Refused in one line while another command holds it."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise C2FError(_held(Path(lock), what)) from None
        yield
    finally:
        os.close(fd)


def _held(path: Path, what: str) -> str:
    try:
        h = json.loads(path.read_text())
    except (OSError, ValueError):  # the holder has not written its name yet
        return f"{what}: in use by another c2f-search command; wait for it to end or choose another folder"
    where = "this machine" if h["host"] == HOST else f"host {h['host']}"
    line = (
        f"{what}: in use by c2f-search {h['command']} (pid {h['pid']} on {where}, since {h['since']}); wait "
        f"for it to end or choose another folder"
    )
    if h["host"] != HOST:
        line += f"; if it no longer runs there, delete {path}"
    return line


def _remove_empty(folders) -> None:
    for p in folders:  # innermost first
        try:
            p.rmdir()
        except OSError:
            return
