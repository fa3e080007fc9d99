"""What the job service refuses, as exceptions the API maps to HTTP statuses (api/errors.py)."""

from __future__ import annotations


class JobNotFound(LookupError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")


class CheckpointNotFound(LookupError):
    """The job has no checkpoint with this id (or none at all, for `latest`; none with an
    evaluation return, for `best`)."""

    def __init__(self, job_id: str, ckpt_id: str) -> None:
        what = {"latest": "no checkpoint yet",
                "best": ("no evaluated checkpoint yet: `best` is the checkpoint with the highest "
                         "evaluation return, and none has been evaluated (the first evaluation comes "
                         "after eval_every updates, and always at the end)")}.get(ckpt_id, f"no checkpoint {ckpt_id!r}")
        super().__init__(f"job {job_id} has {what}")


class VideoNotFound(LookupError):
    """The job has no video with this id."""

    def __init__(self, job_id: str, video_id: str) -> None:
        super().__init__(f"job {job_id} has no video {video_id!r} (GET /jobs/{job_id}/videos lists its videos)")


class JobFinished(RuntimeError):
    """The job already ended, so it cannot be stopped."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} already finished: {status}")


class IdempotencyKeyReused(ValueError):
    """The Idempotency-Key was already used for a different request body."""

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was already used with a different request body")


class InvalidPageToken(ValueError):
    """The page_token was not made by this server."""

    def __init__(self) -> None:
        super().__init__("not a page token from this server; pass next_page_token unchanged")
