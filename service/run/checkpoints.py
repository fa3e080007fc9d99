"""Checkpoint archives of a run, read and written through storage (a path or a URI).

The archive format itself (members, manifest, checks on read) is `learner.checkpoint`'s; this
module puts it where the run's storage says, atomically (see `service.storage`).
"""

from __future__ import annotations

from typing import Any

from learner.checkpoint import Checkpoint, CheckpointRejected, archive_bytes, read_archive
from learner.learner import LearnerState
from learner.spaces import SpacesSpec
from service import storage


def read_checkpoint(location: str) -> Checkpoint:
    """A checkpoint archive read (and verified) from a path or a storage URI."""
    return read_archive(storage.read_bytes(location))


def find_archive(location: str) -> str:
    """The archive a user names: `location` itself when it is a file (or an archive URI), else
    the newest `*.tar.gz` under it (a run directory or a storage prefix; names sort by step).

    FileNotFoundError says which: nothing at a local path, or a directory with no archive.
    """
    if storage.is_local(location):
        path = storage.local_path(location)
        if path.is_file():
            return location
        if not path.exists():
            raise FileNotFoundError(f"{location}: no such file or directory")
    elif location.endswith(".tar.gz"):
        return location
    found = [loc for loc in storage.list_files(location) if loc.endswith(".tar.gz")]
    if not found:
        raise FileNotFoundError(f"no checkpoint archive (*.tar.gz) under {location}: pass an archive "
                                "or a run directory whose checkpoints/ holds one")
    return max(found, key=lambda loc: loc.rsplit("/", 1)[-1])


def open_checkpoint(location: str) -> tuple[str, Checkpoint]:
    """The archive `find_archive` picks and its checkpoint; a file that is not a checkpoint
    archive is refused naming the file."""
    archive = find_archive(location)
    try:
        return archive, read_checkpoint(archive)
    except CheckpointRejected as exc:
        raise CheckpointRejected(f"{archive} is not a usable checkpoint archive: {exc}") from None


def write_checkpoint(location: str, state: LearnerState, spaces: SpacesSpec, env_id: str,
                     config: dict[str, Any], extra: dict[str, Any] | None = None) -> int:
    """Write a checkpoint archive so that readers see the old file or the whole new one, never
    a part; returns its size in bytes. `extra` adds manifest fields (e.g. return_mean)."""
    data = archive_bytes(state, spaces, env_id, config, extra)
    storage.write_bytes_atomic(location, data)
    return len(data)
