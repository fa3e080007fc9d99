"""`JobQueries`: what the API reads of jobs: one job, a page of jobs, metrics rows,
checkpoints and their archives, videos, and the service's readiness. Nothing here changes a job."""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from service.jobs.errors import InvalidPageToken, JobNotFound
from service.jobs.locations import JobLocations
from service.records import JOB_ID_PATTERN, JobStatus
from service.store import CheckpointRow, EventRow, JobRow, JobStore

_PROBES = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ready-probe")
"""Runs readiness probes of Ray, so a hung cluster call cannot hang the request."""


@dataclass(frozen=True)
class JobDetails:
    """A job with what `GET /jobs/{id}` shows besides the record: latest metrics and history."""

    job: JobRow
    latest_metrics: dict[str, Any] | None
    events: list[EventRow]
    evaluation: dict[str, Any] | None = None
    """{"final", "best", "count"} of its evaluation returns (`JobStore.eval_summary`)."""


class JobQueries:
    """Reads of the job store for the API, with ids checked before any lookup."""

    def __init__(self, store: JobStore, locations: JobLocations, cluster_cpus: Callable[[], float]) -> None:
        self.store, self.locations, self.cluster_cpus = store, locations, cluster_cpus

    def readiness(self, timeout_s: float = 5.0) -> dict[str, str]:
        """Each readiness check ("ray", "store") with "ok ..." or the reason it fails."""
        checks: dict[str, str] = {}
        future = _PROBES.submit(self.cluster_cpus)
        try:
            checks["ray"] = f"ok: {future.result(timeout=timeout_s):g} CPUs"
        except concurrent.futures.TimeoutError:
            checks["ray"] = f"no answer from the Ray cluster within {timeout_s:g}s"
        except Exception as exc:  # noqa: BLE001 - report any failure as the reason
            checks["ray"] = f"unreachable: {type(exc).__name__}: {exc}"
        try:
            if not os.access(self.locations.data_dir, os.W_OK):
                raise PermissionError(f"{self.locations.data_dir} is not writable")
            self.store.check_writable()
            checks["store"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["store"] = f"not writable: {type(exc).__name__}: {exc}"
        return checks

    def get(self, job_id: str) -> JobRow:
        """The job; raises JobNotFound."""
        job = self.store.get_job(job_id) if re.fullmatch(JOB_ID_PATTERN, job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        return job

    def describe(self, job_id: str, events: int = 50) -> JobDetails:
        """The job with its latest metrics row, its evaluations and its last events."""
        job = self.get(job_id)
        return JobDetails(job, self.store.latest_metrics(job_id), self.store.events(job_id, events),
                          self.store.eval_summary(job_id))

    def list(self, statuses: list[JobStatus] | None = None, max_results: int = 50,
             page_token: str | None = None, sweep_id: str | None = None) -> tuple[list[JobRow], str | None]:
        """A page of jobs (of sweep `sweep_id`, if given), newest first; returns (jobs,
        next_page_token or None at the end)."""
        before = _decode_token(page_token) if page_token else None
        jobs = self.store.list_jobs(statuses, max_results + 1, before, sweep_id)
        if len(jobs) <= max_results:
            return jobs, None
        jobs = jobs[:max_results]
        return jobs, _encode_token(jobs[-1].created, jobs[-1].id)

    def metrics(self, job_id: str, since_step: int = 0, limit: int = 1000
                ) -> tuple[JobRow, list[dict[str, Any]]]:
        """(job, rows with step > since_step). The job is read first: if it had finished then,
        the rows are all it will ever have."""
        job = self.get(job_id)
        return job, self.store.metrics(job_id, since_step, limit)

    def metrics_json(self, job_id: str, since_step: int = 0, limit: int = 1000
                     ) -> tuple[JobRow, list[tuple[int, str]]]:
        """`metrics`, with each row as (step, its stored JSON): what the API sends, unparsed."""
        job = self.get(job_id)
        return job, self.store.metrics_json(job_id, since_step, limit)

    def checkpoints(self, job_id: str) -> list[CheckpointRow]:
        """The job's checkpoints in step order."""
        self.get(job_id)
        return self.store.checkpoints(job_id)

    def best_checkpoint_id(self, job_id: str) -> str | None:
        """The id `best` stands for (the highest evaluation return), None while none was evaluated."""
        best = self.store.checkpoint(job_id, "best")
        return best.id if best else None

    def checkpoint_archive(self, job_id: str, ckpt_id: str) -> tuple[JobRow, CheckpointRow, str]:
        """(job, the checkpoint's record, location of its archive); `latest` and `best` work.
        Raises JobNotFound, CheckpointNotFound."""
        job = self.get(job_id)
        ckpt, location = self.locations.archive(self.store, job.id, ckpt_id)
        return job, ckpt, location

    def archive(self, job_id: str, ckpt_id: str) -> tuple[str, str]:
        """(location of the checkpoint archive, download file name); `latest` and `best` work.

        The file name is made from the stored ids, never from request text.
        """
        job, ckpt, location = self.checkpoint_archive(job_id, ckpt_id)
        return location, f"{job.id}-{ckpt.id}.tar.gz"

    def export(self, job_id: str, ckpt_id: str, fmt: str) -> tuple[bytes, str]:
        """(the checkpoint's policy exported as `fmt`, download file name); `latest` and `best` work."""
        from service.run.checkpoints import export_policy
        job, ckpt, location = self.checkpoint_archive(job_id, ckpt_id)
        return export_policy(location, fmt), f"{job.id}-{ckpt.id}.{fmt}"

    def videos(self, job_id: str) -> list[dict[str, Any]]:
        """The job's videos in step order: each sidecar's fields (`service.run.videos`) with `id`."""
        from service.run.videos import list_videos
        job = self.get(job_id)
        return list_videos(self.locations.job(job.id))

    def video(self, job_id: str, video_id: str) -> tuple[str, str]:
        """(location of the video's MP4, download file name made from the checked ids)."""
        job = self.get(job_id)
        return self.locations.video(job.id, video_id), f"{job.id}-{video_id}.mp4"


def _encode_token(created: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, job_id]).encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[float, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidPageToken() from None
    if not isinstance(created, (int, float)) or not isinstance(job_id, str) \
            or not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise InvalidPageToken()
    return float(created), job_id
