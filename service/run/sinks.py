"""The sink contract: where a training run reports what happens, and what a checkpoint record holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint archive that was written, as job stores and listings report it."""

    id: str
    location: str
    """Where the archive is: a path or a storage URI (see `service.storage`)."""
    step: int
    return_mean: float | None
    """The mean training return of the last episodes (a window of 20) when it was written."""
    size_bytes: int
    created: float
    eval_return_mean: float | None = None
    """The deterministic evaluation's mean return at its step; None when none ran at that step."""


class TrainingSink(Protocol):
    """Where a Trainer reports what happens: job stores, metric files, progress bars."""

    def event(self, kind: str, message: str) -> None:
        """Something worth a line in the job's history (device chosen, worker replaced...)."""

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics row per update (`service.records.MetricsRow`, dumped)."""

    def checkpoint(self, info: CheckpointInfo) -> None:
        """A checkpoint archive was written."""

    def rewind(self, step: int) -> None:
        """The job goes back to `step` (a restarted learner resumed from that checkpoint): the
        rows recorded after it are void, and rows for those steps will come again."""


class NullSink:
    """A sink that drops everything."""

    def event(self, kind: str, message: str) -> None:
        """Drop the event."""

    def metrics(self, row: dict[str, Any]) -> None:
        """Drop the row."""

    def checkpoint(self, info: CheckpointInfo) -> None:
        """Drop the record."""

    def rewind(self, step: int) -> None:
        """Nothing to drop."""
