"""Where a server job's files live, and how the job store records those places.

A job writes to `<storage root>/<job id>/` (its checkpoints in `checkpoints/`, its videos in
`videos/`); the root is
`A2C_STORAGE` (a path or a URI such as `s3://bucket/prefix`), by default `<data dir>/jobs`.
The store records a location relative to the data dir when it lies under it, so a data dir
can be moved; anything else is recorded as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

from service import storage
from service.jobs.errors import CheckpointNotFound, VideoNotFound
from service.records import CHECKPOINT_ID_PATTERN, VIDEO_ID_PATTERN
from service.run.videos import VIDEOS_DIR, video_location
from service.store import CheckpointRow, JobStore


class JobLocations:
    """The storage root of a server's jobs and the data dir its store records paths against."""

    def __init__(self, data_dir: Path, storage_root: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.storage_root = str(storage_root or self.data_dir / "jobs")
        """Where jobs' archives go: a path or a storage URI; `<data dir>/jobs` by default."""
        self.tensorboard_root = str(storage_root or self.data_dir)
        """Under which `tensorboard/<run name>/` holds a job's event files: the data dir by
        default, the storage root when one is configured (so nothing of a job's is left on a
        server's local disk but its record in the job database)."""

    def job(self, job_id: str) -> str:
        """Where a job's trainer writes (its checkpoints/ live here): a path or a storage URI."""
        return storage.join(self.storage_root, job_id)

    def record(self, location: str) -> str:
        """How a storage location is written down in the store: relative to the data dir when
        it lies under it (as before storage was configurable; the data dir may then move),
        else the path or URI as it is."""
        if storage.is_local(location):
            path = Path(storage.local_path(location)).resolve()
            if path.is_relative_to(self.data_dir.resolve()):
                return path.relative_to(self.data_dir.resolve()).as_posix()
            return str(path)
        return location

    def resolve(self, recorded: str) -> str:
        """The location a recorded path stands for (the inverse of `record`)."""
        if storage.scheme(recorded) or Path(recorded).is_absolute():
            return recorded
        return str(self.data_dir / recorded)

    def archive(self, store: JobStore, job_id: str, ckpt_id: str) -> tuple[CheckpointRow, str]:
        """(the checkpoint's record, the location of its archive); `latest` works.

        Only a location ending in `<job id>/checkpoints/<checkpoint id>.tar.gz` that exists is
        given out: a tampered record or a symlink that leads elsewhere is CheckpointNotFound.
        """
        ckpt = store.checkpoint(job_id, ckpt_id) if re.fullmatch(CHECKPOINT_ID_PATTERN, ckpt_id) else None
        if ckpt is None:
            raise CheckpointNotFound(job_id, ckpt_id)
        location = self.resolve(ckpt.path)
        if storage.is_local(location):
            location = str(Path(storage.local_path(location)).resolve())
        if location.split("/")[-3:] != [job_id, "checkpoints", f"{ckpt.id}.tar.gz"] \
                or not storage.exists(location):
            raise CheckpointNotFound(job_id, ckpt.id)
        return ckpt, location

    def video(self, job_id: str, video_id: str) -> str:
        """The location of a job's video (its MP4), listed or not yet.

        Only a location ending in `<job id>/videos/<video id>.mp4` whose sidecar exists (so the
        MP4 is whole) is given out: a symlink that leads elsewhere is VideoNotFound.
        """
        if not re.fullmatch(VIDEO_ID_PATTERN, video_id):
            raise VideoNotFound(job_id, video_id)
        location = video_location(self.job(job_id), video_id, ".mp4")
        if storage.is_local(location):
            location = str(Path(storage.local_path(location)).resolve())
        if location.split("/")[-3:] != [job_id, VIDEOS_DIR, f"{video_id}.mp4"] \
                or not storage.exists(video_location(self.job(job_id), video_id, ".json")) \
                or not storage.exists(location):
            raise VideoNotFound(job_id, video_id)
        return location
