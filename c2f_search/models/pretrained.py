"""A pretrained init as a search records it: where it is (a local path, a shared path or an object-store URI
read through pyarrow's filesystems), its SHA-256 and its size. ``InitFile.describe`` reads it once in the
driver; ``InitFile.local`` gives a trial a local, verified copy, read once per worker process and cached by
hash, so a file changed in the middle of a search fails the trials that load it instead of mixing two inits.

An init is a file (a checkpoint, a DeiT/timm or official AST state dict) or a Hugging Face AST folder
(``config.json`` and ``model.safetensors``); a folder's hash covers both files."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import C2FError

HF_FILES = ("config.json", "model.safetensors")
CHUNK = 1 << 22
_VERIFIED: dict[str, tuple] = {}  # per process: uri -> (the file's stat signature, sha256, local path)


class InitError(C2FError):
    """An init that cannot be read, or that is not the file a search recorded."""


class InitNotForFamily(InitError):
    """An init of a kind this model family does not read (another family's checkpoint): a search passes it
    only to the models it fits."""


class InitMismatch(InitError):
    """An init of this family whose weights do not fit the model (another width or depth)."""


@dataclass(frozen=True)
class InitFile:
    uri: str  # absolute local path or URI
    sha256: str
    size: int

    @classmethod
    def describe(cls, spec: str) -> InitFile:
        """Read `spec` (a path or URI) in full: its hash and size. A local path is made absolute."""
        uri = _absolute(spec)
        fs, path = _fs(uri)
        return cls(uri, *_digest(fs, path, uri))

    @classmethod
    def from_dict(cls, d: dict | None) -> InitFile | None:
        return None if d is None else cls(str(d["uri"]), str(d["sha256"]), int(d["size"]))

    @classmethod
    def to_read(cls, d: dict) -> InitFile:
        """The init a search recorded, at the place it is read from now: ``read_from`` where a resume named the
        same file (same hash) at a new place, else its recorded ``uri`` (which stays the runs' identity)."""
        return cls(str(d.get("read_from") or d["uri"]), str(d["sha256"]), int(d["size"]))

    def to_dict(self) -> dict:
        return asdict(self)

    def local(self) -> str:
        """A local path holding exactly this init, checked against its hash: the file itself where it is local,
        else a copy in ``$C2F_CACHE/init/SHA`` fetched once. A file whose size or modification time changed is
        hashed again; one whose hash differs is refused, naming it."""
        fs, path = _fs(self.uri)
        try:
            sig = _signature(fs, path)
        except OSError as e:
            raise InitError(f"node {socket.gethostname()} cannot read the init {self.uri}: {_first(e)}") from None
        known = _VERIFIED.get(self.uri)
        if known is not None and known[0] == sig and known[1] == self.sha256:
            return known[2]
        digest = _digest(fs, path, self.uri)[0]  # the source itself: a changed file is caught here
        if digest != self.sha256:
            raise InitError(
                f"the init {self.uri} is not the file the search recorded (SHA-256 {digest[:12]}..., "
                f"recorded {self.sha256[:12]}...): it changed; restore it, or give the file to use with --init"
            )
        local = self.uri if _is_local(self.uri) else str(_fetch(fs, path, self))
        if local != self.uri and _digest(*_fs(local), local)[0] != self.sha256:
            raise InitError(f"{local}: a damaged copy of the init {self.uri} in the node's cache; delete it")
        _VERIFIED[self.uri] = (sig, digest, local)
        return local

    def recheck(self) -> None:
        """Hash the init again (after it failed to load): a file replaced since its check is named as changed."""
        _VERIFIED.pop(self.uri, None)
        self.local()

    def same_as(self, other: InitFile | None) -> bool:
        return other is not None and other.sha256 == self.sha256


def _absolute(spec: str) -> str:
    spec = str(spec)
    return spec if "://" in spec else str(Path(spec).expanduser().resolve())


def _is_local(uri: str) -> bool:
    """A plain path is read in place; a URI (s3://, gs://, file:// on a shared mount) is copied to the node."""
    return "://" not in uri


def _fs(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # an unknown scheme, or a filesystem pyarrow was built without
        raise InitError(f"--init {uri}: cannot open it ({_first(e)}); give a local path, s3:// or gs:// URI") from None


def _first(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _members(fs, path: str) -> list[str]:
    """The files an init consists of: itself, or a Hugging Face folder's two files."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file or folder")
    if info.type == pafs.FileType.Directory:
        return [f"{path.rstrip('/')}/{name}" for name in HF_FILES]
    return [path]


def _signature(fs, path: str) -> tuple:
    return tuple((i.size, i.mtime_ns) for i in fs.get_file_info(_members(fs, path)))


def _digest(fs, path: str, uri: str) -> tuple[str, int]:
    """(SHA-256, size) of the init at `path`; a folder's: of its files' hashes."""
    try:
        parts = []
        for member in _members(fs, path):
            h, n = hashlib.sha256(), 0
            with fs.open_input_stream(member) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
            parts.append((h.hexdigest(), n))
    except (OSError, FileNotFoundError) as e:
        raise InitError(f"--init {uri}: cannot read it on {socket.gethostname()} ({_first(e)})") from None
    if len(parts) == 1:
        return parts[0]
    return hashlib.sha256("".join(h for h, _ in parts).encode()).hexdigest(), sum(n for _, n in parts)


def _fetch(fs, path: str, init: InitFile) -> Path:
    """A local copy of a remote init, in the node's cache folder under its hash (written atomically)."""
    from ..files import atomic_write, cache_root

    dest = cache_root() / "init" / init.sha256 / Path(path.rstrip("/")).name
    members = _members(fs, path)
    targets = [dest / Path(m).name for m in members] if len(members) > 1 else [dest]
    for member, target in zip(members, targets):
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with fs.open_input_stream(member) as f:
                    atomic_write(target, f.readall())
            except OSError as e:
                raise InitError(f"node {socket.gethostname()} cannot read the init {init.uri}: {_first(e)}") from None
    return dest


def cache_info() -> dict:
    """What this process has verified (for tests and debugging): uri -> sha256."""
    return {uri: v[1] for uri, v in _VERIFIED.items()}


def clear_cache() -> None:
    _VERIFIED.clear()
