"""Checkpoint archives of a run, read and written through storage (a path or a URI).

The archive format itself (members, manifest, checks on read) is `learner.checkpoint`'s; this
module puts it where the run's storage says, atomically (see `service.storage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from learner.checkpoint import (Checkpoint, CheckpointRejected, PolicyCheckpoint, archive_bytes, read_archive,
                               read_manifest, read_policy)
from learner.rollout import LearnerState
from learner.spaces import SpacesSpec
from service import storage
from service.records import CHECKPOINT_ID_PATTERN

ARCHIVE_NAME = re.compile(r"(?:[0-9a-f]{12}-)?(step-([0-9]{10,19}))\.tar\.gz")
"""The file name of an archive: `<checkpoint id>.tar.gz` as the trainer writes it, or
`<job id>-<checkpoint id>.tar.gz` as the API's download names it."""


@dataclass(frozen=True)
class ArchiveEntry:
    """One archive of a run directory, as its manifest describes it."""

    id: str
    location: str
    step: int
    eval_return_mean: float | None
    return_mean: float | None


def _named_archives(location: str) -> list[tuple[int, str, str]]:
    """(step, checkpoint id, location) of each archive under a run directory or storage prefix
    (its checkpoints/ included), by file name alone, in step order."""
    found = []
    for loc in storage.list_files(location):
        match = ARCHIVE_NAME.fullmatch(loc.rsplit("/", 1)[-1])
        if match:
            found.append((int(match.group(2)), match.group(1), loc))
    return sorted(found)


def run_archives(location: str) -> list[ArchiveEntry]:
    """The archives of a run directory or storage prefix, in step order, each described by
    its manifest (only the manifest is read)."""
    entries = []
    for _, ckpt_id, loc in _named_archives(location):
        manifest = read_manifest(storage.read_bytes(loc))
        entries.append(ArchiveEntry(ckpt_id, loc, int(manifest["step"]), manifest.get("eval_return_mean"),
                                    manifest.get("return_mean")))
    return entries


def best_of(entries: list[ArchiveEntry]) -> ArchiveEntry | None:
    """The entry with the highest evaluation return (of equals, the later), as the job store's
    `best`; None when none was evaluated."""
    evaluated = [e for e in entries if e.eval_return_mean is not None]
    return max(evaluated, key=lambda e: (e.eval_return_mean, e.step)) if evaluated else None


def find_archive(location: str, which: str = "latest") -> str:
    """The archive a user names: `location` itself when it is a file (or an archive URI), else
    the one `which` names among a run directory's archives: `latest` (the highest step), `best`
    (the highest evaluation return: only then are manifests read) or a checkpoint id.

    FileNotFoundError says what is missing: nothing at a local path, a directory with no
    archive, no evaluated archive for `best`, or no archive of that id.
    """
    if not re.fullmatch(CHECKPOINT_ID_PATTERN, which):
        raise FileNotFoundError(f"checkpoint {which!r}: give latest, best or an id such as step-0000051200")
    if storage.is_local(location):
        path = storage.local_path(location)
        if not path.exists():
            raise FileNotFoundError(f"{location}: no such file or directory")
        single = path.is_file()
    else:
        single = location.endswith(".tar.gz")
    if single:
        if which != "latest":
            raise FileNotFoundError(f"{location} is one archive; checkpoint {which!r} names one of a run "
                                    "directory's archives: give the run directory")
        return location
    named = _named_archives(location)
    if not named:
        raise FileNotFoundError(f"no checkpoint archive (*.tar.gz) under {location}: pass an archive "
                                "or a run directory whose checkpoints/ holds one")
    if which == "latest":
        return named[-1][2]
    if which == "best":
        best = best_of(run_archives(location))
        if best is None:
            raise FileNotFoundError(f"no evaluated checkpoint under {location}: `best` is the archive with the "
                                    "highest evaluation return, and none of its manifests has one")
        return best.location
    chosen = next((loc for _, ckpt_id, loc in named if ckpt_id == which), None)
    if chosen is None:
        raise FileNotFoundError(f"no checkpoint {which} under {location}")
    return chosen


def read_checkpoint(location: str) -> Checkpoint:
    """A checkpoint archive read (and verified) from a path or a storage URI."""
    return read_archive(storage.read_bytes(location))


def read_checkpoint_policy(location: str) -> PolicyCheckpoint:
    """Only the policy of a checkpoint archive at a path or a storage URI (`read_policy`: the
    optimizer state is not read)."""
    return read_policy(storage.read_bytes(location))


def open_checkpoint(location: str, which: str = "latest") -> tuple[str, Checkpoint]:
    """The archive `find_archive` picks and its checkpoint; a file that is not a checkpoint
    archive is refused naming the file."""
    archive = find_archive(location, which)
    try:
        return archive, read_checkpoint(archive)
    except CheckpointRejected as exc:
        raise CheckpointRejected(f"{archive} is not a usable checkpoint archive: {exc}") from None


EXPORT_FORMATS = ("onnx",)
"""What a checkpoint's policy can be exported as (see `learner.export`)."""


def export_policy(location: str, fmt: str = "onnx") -> bytes:
    """The policy of the checkpoint archive at `location` as a model file of format `fmt`:
    for onnx, the graph of `learner.export` (raw observations in, the deterministic action out).
    The policy's members are verified as every read is; nothing of the archive is unpickled or
    run, and the optimizer state is not read."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of: {', '.join(EXPORT_FORMATS)}")
    from learner.export import onnx_bytes
    return onnx_bytes(read_checkpoint_policy(location).policy())


def write_checkpoint(location: str, state: LearnerState, spaces: SpacesSpec, env_id: str,
                     config: dict[str, Any], extra: dict[str, Any] | None = None) -> int:
    """Write a checkpoint archive so that readers see the old file or the whole new one, never
    a part; returns its size in bytes. `extra` adds manifest fields (e.g. return_mean)."""
    data = archive_bytes(state, spaces, env_id, config, extra)
    storage.write_bytes_atomic(location, data)
    return len(data)
