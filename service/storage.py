"""Where checkpoints and metrics live: a local or shared path, or a filesystem URI.

A location is either a plain path (`/mnt/shared/a2c`, `runs/abc`) or a URI with a scheme:
`file:///mnt/shared/a2c`, `s3://bucket/prefix`, `gs://bucket/prefix`; in tests `memory://x` (one
process) and `local:///tmp/x` (fsspec's local filesystem).
Plain paths and `file://` URIs are written here with tmp file + fsync + os.replace + directory
fsync, so a reader never sees half an archive. Other schemes go through fsspec when it is
installed (with the scheme's own package, e.g. s3fs for s3://), else through `pyarrow.fs`;
object stores replace a whole object on each PUT, which is their atomic write.

The driver writes through this module, so it does not matter on which node the learner ran,
and the API server reads the same locations back.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_TMP_SUFFIX = ".tmp"


class StorageUnavailable(RuntimeError):
    """A storage URI whose scheme no installed filesystem library can open; says what to install."""


def scheme(location: str | os.PathLike) -> str:
    """The URI scheme of a location ("s3", "file", ...), or "" for a plain path."""
    match = _SCHEME.match(os.fspath(location))
    return match.group(1).lower() if match else ""


def is_local(location: str | os.PathLike) -> bool:
    """Whether a location is on this machine's filesystem (a plain path or a file:// URI)."""
    return scheme(location) in ("", "file")


def local_path(location: str | os.PathLike) -> Path:
    """The filesystem path of a plain path or a `file://` URI; ValueError for other schemes."""
    location = os.fspath(location)
    kind = scheme(location)
    if kind == "":
        return Path(location)
    if kind != "file":
        raise ValueError(f"{location} is not a local path or file:// URI")
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{location}: file:// URIs must name a local path (file:///abs/path)")
    return Path(unquote(parts.path))


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base` with path parts appended, keeping its style: a plain path or a URI.

    Parts are relative names (no leading "/", no ".."): they come from the service, never from
    request text, and must not climb out of `base`.
    """
    base = os.fspath(base)
    for part in parts:
        if part.startswith("/") or ".." in Path(part).parts:
            raise ValueError(f"storage path part {part!r} must be relative and must not contain ..")
    if not scheme(base):
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts) if parts else base


def write_bytes_atomic(location: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a file so that readers see the old content or the new, never a part."""
    if is_local(location):
        _write_local(local_path(location), data)
        return
    fs, path = _filesystem(location)
    if hasattr(fs, "pipe_file"):  # fsspec
        parent = posixpath.dirname(path)
        if parent:
            with contextlib.suppress(Exception):  # object stores have no directories to make
                fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)
    else:  # pyarrow.fs
        with fs.open_output_stream(path) as out:
            out.write(data)


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole content of a file; FileNotFoundError when there is none."""
    if is_local(location):
        return local_path(location).read_bytes()
    fs, path = _filesystem(location)
    if hasattr(fs, "cat_file"):  # fsspec
        return fs.cat_file(path)
    from pyarrow import fs as pafs
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


@contextlib.contextmanager
def open_read(location: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary stream of a file, to read in chunks (a download is served without loading it
    whole); FileNotFoundError when there is none."""
    if is_local(location):
        with open(local_path(location), "rb") as stream:
            yield stream
        return
    fs, path = _filesystem(location)
    if hasattr(fs, "cat_file"):  # fsspec
        with fs.open(path, "rb") as stream:
            yield stream
        return
    from pyarrow import fs as pafs
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(location)
    with fs.open_input_stream(path) as stream:
        yield stream


def read_chunks(location: str | os.PathLike, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """A file's content, `chunk_bytes` at a time (for a download served without loading it whole)."""
    with open_read(location) as stream:
        while chunk := stream.read(chunk_bytes):
            yield chunk


def check_available(location: str | os.PathLike) -> None:
    """Raise StorageUnavailable now if no installed library can open the location's scheme,
    rather than at a job's first checkpoint."""
    if not is_local(location):
        _filesystem(location)


def exists(location: str | os.PathLike) -> bool:
    """Whether a file (or directory) exists at the location."""
    if is_local(location):
        return local_path(location).exists()
    fs, path = _filesystem(location)
    if hasattr(fs, "exists"):  # fsspec
        return bool(fs.exists(path))
    from pyarrow import fs as pafs
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(prefix: str | os.PathLike) -> list[str]:
    """Every file under a directory location, recursively, sorted, in the style of `prefix`.

    Temporary files of writes in progress are left out. A missing directory lists as empty.
    """
    prefix = os.fspath(prefix)
    if is_local(prefix):
        root = local_path(prefix)
        if not root.is_dir():
            return []
        found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and not _is_temp(p.name))
        return [join(prefix, rel) for rel in found]
    fs, path = _filesystem(prefix)
    path = path.rstrip("/")
    if hasattr(fs, "find"):  # fsspec
        names = fs.find(path) if fs.exists(path) else []
    else:  # pyarrow.fs
        from pyarrow import fs as pafs
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        names = [info.path for info in fs.get_file_info(selector) if info.type == pafs.FileType.File]
    base_path = path.lstrip("/")
    rels = []
    for name in names:
        rel = posixpath.relpath(name.lstrip("/"), base_path)
        if not rel.startswith("..") and not _is_temp(posixpath.basename(rel)):
            rels.append(rel)
    return [join(prefix, rel) for rel in sorted(rels)]


class JsonLines:
    """A JSON-lines file in storage that only grows by whole records (metrics.jsonl, events.jsonl).

    On a local path each record is appended and flushed as it comes, so readers (`tail -f`)
    see it at once. An object store cannot append: there the records are kept in memory and
    the whole object is rewritten at `flush()` (the CLI flushes at each checkpoint and at the
    end), so a crash loses at most the records since the last flush.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self._file = None
        self._lines: list[str] = []
        self._dirty = False
        if is_local(location):
            local_path(location).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(local_path(location), "a", buffering=1)
        elif exists(location):  # continue the file, as "a" does locally
            self._lines = read_bytes(location).decode().splitlines(keepends=True)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record (one line)."""
        line = json.dumps(record) + "\n"
        if self._file is not None:
            self._file.write(line)
        else:
            self._lines.append(line)
            self._dirty = True

    def keep(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the records for which `predicate` is false, rewriting the file atomically."""
        if self._file is not None:
            self._file.close()
            lines = local_path(self.location).read_text().splitlines(keepends=True)
        else:
            lines = self._lines
        self._lines = [line for line in lines if line.strip() and predicate(json.loads(line))]
        write_bytes_atomic(self.location, "".join(self._lines).encode())
        self._dirty = False
        if self._file is not None:
            self._lines = []
            self._file = open(local_path(self.location), "a", buffering=1)

    def flush(self) -> None:
        """Make every record so far visible in storage."""
        if self._file is not None:
            self._file.flush()
        elif self._dirty:
            write_bytes_atomic(self.location, "".join(self._lines).encode())
            self._dirty = False

    def close(self) -> None:
        """Flush and release the file."""
        self.flush()
        if self._file is not None:
            self._file.close()


def _is_temp(name: str) -> bool:
    """Whether a file name is one of `_write_local`'s temporary files."""
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def _write_local(path: Path, data: bytes) -> None:
    """tmp file in the same directory, fsync, os.replace, then fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _filesystem(location: str | os.PathLike) -> tuple[Any, str]:
    """(filesystem, path inside it) for a non-local URI: fsspec first, then pyarrow.fs."""
    location = os.fspath(location)
    errors = []
    try:
        import fsspec
    except ImportError:
        errors.append("fsspec is not installed")
    else:
        try:
            return fsspec.core.url_to_fs(location)
        except (ImportError, ValueError) as exc:  # e.g. s3fs missing for s3://
            errors.append(f"fsspec: {exc}")
    try:
        from pyarrow import fs as pafs
    except ImportError:
        errors.append("pyarrow is not installed")
    else:
        try:
            return pafs.FileSystem.from_uri(location)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid and others
            errors.append(f"pyarrow: {exc}")
    raise StorageUnavailable(
        f"cannot open {location}: " + "; ".join(errors)
        + f". Install fsspec with the package for {scheme(location)}:// (e.g. s3fs, gcsfs) or pyarrow")
