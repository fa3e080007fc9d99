"""Checkpoint archives of a run, read and written through storage (a path or a URI).

The archive format itself (members, manifest, checks on read) is `learner.checkpoint`'s; this
module puts it where the run's storage says, atomically (see `service.storage`).
"""

from __future__ import annotations

from typing import Any

from learner.checkpoint import Checkpoint, archive_bytes, read_archive
from learner.learner import LearnerState
from learner.spaces import SpacesSpec
from service import storage


def read_checkpoint(location: str) -> Checkpoint:
    """A checkpoint archive read (and verified) from a path or a storage URI."""
    return read_archive(storage.read_bytes(location))


def write_checkpoint(location: str, state: LearnerState, spaces: SpacesSpec, env_id: str,
                     config: dict[str, Any], extra: dict[str, Any] | None = None) -> int:
    """Write a checkpoint archive so that readers see the old file or the whole new one, never
    a part; returns its size in bytes. `extra` adds manifest fields (e.g. return_mean)."""
    data = archive_bytes(state, spaces, env_id, config, extra)
    storage.write_bytes_atomic(location, data)
    return len(data)
