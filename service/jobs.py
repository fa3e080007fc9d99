"""`JobManager`: submits, queues, runs, stops and recovers training jobs for the API.

Each admitted job runs `Trainer.run()` in its own process (`service.job_process`), watched by
a thread of the server that writes the job's events, metrics rows and checkpoint records into
the `JobStore`. The archives themselves go to the storage root (`A2C_STORAGE`: a path or a URI
such as `s3://bucket/prefix`; by default `<data dir>/jobs`), under
`<root>/<job id>/checkpoints/`. A job is admitted when the cluster
has CPUs left for its workers and learner (so jobs wait in PENDING instead of half-starting and
starving each other), and at most `max_concurrent_jobs` run at once.

States: PENDING -> RUNNING (on the trainer's "started" event) -> SUCCEEDED | FAILED | STOPPED.
"""

from __future__ import annotations

import base64
import binascii
import collections
import concurrent.futures
import hashlib
import os
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from learner.checkpoint import CheckpointRejected
from service import storage
from service.cluster import driver_address
from service.job_process import DriverRequest, JobProcess
from service.spec import InvalidSpec, JobSpec, build_spec
from service.store import CheckpointRow, EventRow, JobRow, JobStore
from service.tensorboard_log import TensorBoardLog
from service.trainer import CheckpointInfo, job_spaces, read_checkpoint

log = logging.getLogger(__name__)

JOB_ID_PATTERN = r"^[0-9a-f]{12}$"
"""Job ids are 12 lowercase hex digits; nothing else ever reaches a path or a query."""
CHECKPOINT_ID_PATTERN = r"^(latest|step-[0-9]{10,19})$"
"""Checkpoint ids as the trainer writes them, or `latest`."""
STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")


class JobNotFound(LookupError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")


class CheckpointNotFound(LookupError):
    """The job has no checkpoint with this id (or none at all, for `latest`)."""

    def __init__(self, job_id: str, ckpt_id: str) -> None:
        what = "no checkpoint yet" if ckpt_id == "latest" else f"no checkpoint {ckpt_id!r}"
        super().__init__(f"job {job_id} has {what}")


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


class ResumeFrom(BaseModel):
    """Where a submitted job continues from: a checkpoint of an earlier job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(pattern=JOB_ID_PATTERN, examples=["3f2a9c0b1d4e"])
    """The earlier job."""
    checkpoint: str = Field("latest", pattern=CHECKPOINT_ID_PATTERN, examples=["latest", "step-0000051200"])
    """One of its checkpoint ids, or `latest`."""


@dataclass(frozen=True)
class JobLimits:
    """What this server accepts and how it schedules (from the API settings)."""

    max_total_steps: int = 50_000_000
    max_workers_per_job: int = 64
    max_concurrent_jobs: int = 4
    resource_timeout_s: float = 600.0
    max_recoveries: int = 3
    """A job RUNNING when the server died is resumed at most this many times."""


@dataclass(frozen=True)
class JobDetails:
    """A job with what `GET /jobs/{id}` shows besides the record: latest metrics and history."""

    job: JobRow
    latest_metrics: dict[str, Any] | None
    events: list[EventRow]


@dataclass
class _Active:
    """A job admitted to run: its CPU reservation, its driver process once started, a stop flag."""

    cpus: int
    driver: JobProcess | None = None
    stop: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)


_PROBES = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ready-probe")
"""Runs readiness probes of Ray, so a hung cluster call cannot hang the request."""


def ray_cluster_cpus() -> float:
    """Total logical CPUs of the connected Ray cluster."""
    import ray
    return float(ray.cluster_resources().get("CPU", 0))


def _request_hash(raw: Any) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _merge_spec(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging the a2c and policy sections field by field."""
    out = dict(base)
    for key, value in override.items():
        if key in ("a2c", "policy") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _invalid(prefix: str, exc: ValidationError) -> InvalidSpec:
    err = exc.errors()[0]
    return InvalidSpec(".".join([prefix, *map(str, err["loc"])]), err["msg"])


class StoreSink:
    """The trainer's sink for one job: events, metrics rows and checkpoint records go to the store."""

    def __init__(self, store: JobStore, job_id: str, record: Callable[[str], str], location: str) -> None:
        self.store, self.job_id, self.record = store, job_id, record
        self.tensorboard = TensorBoardLog(location)

    def event(self, kind: str, message: str) -> None:
        """Record the event; "started" is when the job becomes RUNNING."""
        self.store.add_event(self.job_id, kind, message)
        if kind == "started":
            self.store.mark_running(self.job_id)

    def metrics(self, row: dict[str, Any]) -> None:
        """Record one metrics row (the store, then the job's TensorBoard log)."""
        self.store.append_metrics(self.job_id, row)
        self.tensorboard.write(row)

    def checkpoint(self, info: CheckpointInfo) -> None:
        """Record a written archive (by its location as `record` writes it down); the TensorBoard
        log so far goes to storage with it."""
        self.store.add_checkpoint(self.job_id, CheckpointRow(
            info.id, info.step, info.return_mean, info.size_bytes, info.created, self.record(info.location)))
        self.tensorboard.flush()

    def rewind(self, step: int) -> None:
        """Drop the rows past `step`: the restarted learner records those steps again."""
        dropped = self.store.rewind(self.job_id, step)
        if dropped:
            self.store.add_event(self.job_id, "metrics_rewound", f"{dropped} metrics row(s) after step "
                                 f"{step} dropped; the resumed run records them again")


class JobManager:
    """Runs the service's jobs: submit, list, describe, stop, and recovery after a restart."""

    def __init__(self, store: JobStore, data_dir: Path, limits: JobLimits | None = None,
                 cluster_cpus: Callable[[], float] = ray_cluster_cpus, storage_root: str | None = None,
                 ray_address: str | None = None) -> None:
        self.store, self.data_dir = store, Path(data_dir)
        self.ray_address = ray_address
        """The Ray cluster the jobs' driver processes join (default: the one this process is on)."""
        self.storage_root = str(storage_root or self.data_dir / "jobs")
        """Where jobs' archives go: a path or a storage URI; `<data dir>/jobs` by default."""
        self.limits = limits or JobLimits()
        self.cluster_cpus = cluster_cpus
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._active: dict[str, _Active] = {}
        self._reserved = 0
        self._closing = False
        self._scheduler: threading.Thread | None = None

    def job_location(self, job_id: str) -> str:
        """Where a job's trainer writes (its checkpoints/ live here): a path or a storage URI."""
        return storage.join(self.storage_root, job_id)

    def _record(self, location: str) -> str:
        """How a storage location is written down in the store: relative to the data dir when
        it lies under it (as before storage was configurable; the data dir may then move),
        else the path or URI as it is."""
        if storage.is_local(location):
            path = Path(storage.local_path(location)).resolve()
            if path.is_relative_to(self.data_dir.resolve()):
                return path.relative_to(self.data_dir.resolve()).as_posix()
            return str(path)
        return location

    def _location(self, recorded: str) -> str:
        """The location a recorded checkpoint path stands for (the inverse of `_record`)."""
        if storage.scheme(recorded) or Path(recorded).is_absolute():
            return recorded
        return str(self.data_dir / recorded)

    # Lifecycle of the manager

    def start(self) -> None:
        """Take care of jobs left unfinished by the previous server, then start scheduling."""
        self._recover()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="job-scheduler", daemon=True)
        self._scheduler.start()

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop scheduling and ask running jobs to stop; they resume at the next start.

        Each running job writes a final checkpoint and goes back to PENDING. Jobs that do not
        finish within `grace_s` stay as they are; the next start recovers them.
        """
        with self._cond:
            self._closing = True
            self._queue.clear()
            active = list(self._active.values())
            for job in active:
                if job.driver is not None:
                    job.driver.request_stop()
            self._cond.notify_all()
        deadline = time.monotonic() + grace_s
        for job in active:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
        for job in active:  # past the grace: their drivers exit now; the next start resumes them
            if job.driver is not None and job.thread is not None and job.thread.is_alive():
                job.driver.abandon()
        if self._scheduler is not None:
            self._scheduler.join(5)

    def _recover(self) -> None:
        """Requeue jobs the previous server left PENDING or RUNNING (its Ray died with it)."""
        for job in self.store.unfinished_jobs():
            latest = self.store.checkpoint(job.id, "latest")
            running = job.status == "RUNNING"
            if job.stop_requested:
                self.store.finish(job.id, "STOPPED", error=None)
                self.store.add_event(job.id, "recovered", "the server restarted after a stop request; "
                                     + (f"{latest.id} is the final checkpoint" if latest else "no checkpoint"))
                continue
            if running and job.recoveries >= self.limits.max_recoveries:
                self.store.finish(job.id, "FAILED", error_type="ServerRestarted", error=(
                    f"the server restarted while this job was RUNNING, {job.recoveries + 1} times; "
                    f"not resuming it again" + (f" (last checkpoint {latest.id})" if latest else "")))
                continue
            where = "RUNNING (its Ray actors died with the server)" if running else job.status
            if latest is not None:
                self.store.requeue(job.id, latest.path, latest.step, count_recovery=running, reason=(
                    f"the server restarted while the job was {where}; resuming from checkpoint "
                    f"{latest.id} (step {latest.step})"))
            else:
                start = f"from step {job.resume_step}" if job.resume_path else "from the beginning"
                self.store.requeue(job.id, job.resume_path, job.resume_step, count_recovery=running,
                                   reason=f"the server restarted while the job was {where}; "
                                          f"no checkpoint yet, so it starts again {start}")
            self._queue.append(job.id)

    # Submitting

    def submit(self, raw: Any, idempotency_key: str | None = None) -> tuple[JobRow, bool]:
        """Validate a raw job spec and queue the job; returns (job, replayed).

        `replayed` is True when the Idempotency-Key was seen before with the same body: the
        earlier job comes back and nothing new is queued. Raises InvalidSpec naming the field.
        """
        if not isinstance(raw, dict):
            raise InvalidSpec("body", "must be a JSON object of job spec fields")
        request_hash = _request_hash(raw)
        if idempotency_key is not None:
            earlier = self.store.job_by_idempotency_key(idempotency_key)
            if earlier is not None:
                if earlier.request_hash != request_hash:
                    raise IdempotencyKeyReused()
                return earlier, True
        data = dict(raw)
        resume_from, resume, resume_ckpt = data.pop("resume_from", None), None, None
        if resume_from is not None:
            resume_from, resume_ckpt, resume = self._resume_source(resume_from)
            data = _merge_spec(resume.config, data)
        spec = build_spec(data, strict=True)  # JSON: types must match the schema
        self._check_limits(spec, resume)
        job, created = self.store.create_job(
            uuid.uuid4().hex[:12], spec.model_dump(mode="json"), idempotency_key=idempotency_key,
            request_hash=request_hash,
            resumed_from_job=resume_from.job_id if resume_from else None,
            resumed_from_checkpoint=resume_ckpt.id if resume_ckpt else None,
            resume_path=resume_ckpt.path if resume_ckpt else None,
            resume_step=resume_ckpt.step if resume_ckpt else 0)
        if not created:  # a concurrent request with the same key won the race
            if job.request_hash != request_hash:
                raise IdempotencyKeyReused()
            return job, True
        if resume_ckpt is not None:
            self.store.add_event(job.id, "resume", f"continues job {resume_from.job_id} from "
                                 f"{resume_ckpt.id} (step {resume_ckpt.step})")
        with self._cond:
            self._queue.append(job.id)
            self._cond.notify_all()
        return job, False

    def _resume_source(self, value: Any):
        """The (ResumeFrom, checkpoint record, read archive) a resumed job starts from."""
        try:
            resume_from = ResumeFrom.model_validate(value)
        except ValidationError as exc:
            raise _invalid("resume_from", exc) from None
        if self.store.get_job(resume_from.job_id) is None:
            raise InvalidSpec("resume_from.job_id", f"no job with id {resume_from.job_id!r}")
        ckpt = self.store.checkpoint(resume_from.job_id, resume_from.checkpoint)
        if ckpt is None:
            raise InvalidSpec("resume_from.checkpoint",
                              str(CheckpointNotFound(resume_from.job_id, resume_from.checkpoint)))
        try:
            # archive() refuses a record whose location is not this job's checkpoint.
            archive = read_checkpoint(self.archive(resume_from.job_id, ckpt.id)[0])
        except (CheckpointRejected, CheckpointNotFound, OSError, storage.StorageUnavailable) as exc:
            raise InvalidSpec("resume_from.checkpoint", f"{ckpt.id} cannot be read: {exc}") from None
        return resume_from, ckpt, archive

    def _check_limits(self, spec: JobSpec, resume) -> None:
        """What the spec alone cannot know: this server's limits, the cluster, the env's spaces."""
        limits = self.limits
        if spec.total_steps > limits.max_total_steps:
            raise InvalidSpec("total_steps", f"{spec.total_steps} is above this server's limit "
                              f"of {limits.max_total_steps} (A2C_MAX_TOTAL_STEPS)")
        if spec.workers > limits.max_workers_per_job:
            raise InvalidSpec("workers", f"{spec.workers} is above this server's limit of "
                              f"{limits.max_workers_per_job} workers per job (A2C_MAX_WORKERS_PER_JOB)")
        cpus = self.cluster_cpus()
        if spec.cpus_needed > cpus:
            raise InvalidSpec("workers", f"{spec.workers} workers and the learner (learner_cpus={spec.learner_cpus}) need "
                              f"{spec.cpus_needed} CPUs; the cluster has {cpus:g}")
        job_spaces(spec, resume)
        if resume is not None:
            if spec.total_steps <= resume.state.step:
                raise InvalidSpec("total_steps", f"must be above the checkpoint's step "
                                  f"({resume.state.step}) to train further")

    # Scheduling and running

    def _schedule_loop(self) -> None:
        """Admit queued jobs whenever something changes (and every few seconds, for clusters)."""
        with self._cond:
            while not self._closing:
                try:
                    self._admit()
                except Exception:  # noqa: BLE001 - e.g. Ray briefly unreachable; try again later
                    log.exception("scheduling failed; retrying")
                self._cond.wait(timeout=5.0)

    def _admit(self) -> None:
        """Start queued jobs in submission order while CPUs and concurrency allow (holds _cond)."""
        while self._queue and len(self._active) < self.limits.max_concurrent_jobs:
            job = self.store.get_job(self._queue[0])
            if job is None or job.finished:
                self._queue.popleft()
                continue
            need = job.spec["workers"] + 1
            if self._reserved + need > self.cluster_cpus():
                return  # the head of the queue waits for CPUs; later jobs wait behind it
            self._queue.popleft()
            active = _Active(cpus=need, stop=job.stop_requested)
            active.thread = threading.Thread(target=self._run, args=(job, active), name=f"job-{job.id}",
                                             daemon=True)
            self._active[job.id] = active
            self._reserved += need
            active.thread.start()

    def _run(self, job: JobRow, active: _Active) -> None:
        """Train one job to its end in a driver process and record the outcome (runs in the job's thread)."""
        try:
            location = self.job_location(job.id)
            sink = StoreSink(self.store, job.id, self._record, location)
            driver = JobProcess(DriverRequest(
                job.id, job.spec, location, self._location(job.resume_path) if job.resume_path else None,
                job.resume_path, self.limits.resource_timeout_s, self.ray_address or driver_address()))
            with self._cond:
                active.driver = driver
                if active.stop or self._closing:
                    driver.request_stop()
            summary, ckpt = driver.run(sink)
            summary["checkpoint"] = ckpt.id if ckpt else None  # an id, not a server path
            if summary["status"] == "STOPPED" and self._closing and not active.stop and ckpt:
                self.store.requeue(job.id, self._record(ckpt.location), ckpt.step, reason=(
                    f"the server shut down; the job resumes from {ckpt.id} at its next start"))
            else:
                self.store.finish(job.id, summary["status"], summary=summary)
        except Exception as exc:  # noqa: BLE001 - any failure ends the job FAILED with the reason
            error_type = getattr(exc, "error_type", type(exc).__name__)
            log.warning("job %s failed: %s: %s", job.id, error_type, exc)
            self.store.finish(job.id, "FAILED", error=str(exc) or error_type, error_type=error_type)
        finally:
            with self._cond:
                self._active.pop(job.id, None)
                self._reserved -= active.cpus
                self._cond.notify_all()

    def stop(self, job_id: str) -> JobRow:
        """Ask a job to stop: a running one ends after its current update with a final checkpoint
        (then STOPPED); a queued one is STOPPED at once. Raises JobFinished if it already ended."""
        job = self.get(job_id)
        with self._cond:
            if not self.store.request_stop(job_id):
                raise JobFinished(job_id, self.get(job_id).status)
            active = self._active.get(job_id)
            if active is not None:
                active.stop = True
                if active.driver is not None:
                    active.driver.request_stop()
            else:
                if job_id in self._queue:
                    self._queue.remove(job_id)
                self.store.finish(job_id, "STOPPED")
        return self.get(job_id)

    # Queries

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
            if not os.access(self.data_dir, os.W_OK):
                raise PermissionError(f"{self.data_dir} is not writable")
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
        """The job with its latest metrics row and its last events."""
        job = self.get(job_id)
        return JobDetails(job, self.store.latest_metrics(job_id), self.store.events(job_id, events))

    def list(self, statuses: list[str] | None = None, max_results: int = 50,
             page_token: str | None = None) -> tuple[list[JobRow], str | None]:
        """A page of jobs, newest first; returns (jobs, next_page_token or None at the end)."""
        before = _decode_token(page_token) if page_token else None
        jobs = self.store.list_jobs(statuses, max_results + 1, before)
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

    def archive(self, job_id: str, ckpt_id: str) -> tuple[str, str]:
        """(location of the checkpoint archive, download file name); `latest` works.

        Only a location ending in `<job id>/checkpoints/<checkpoint id>.tar.gz` is served, and
        the file name is made from the stored ids, never from request text.
        """
        job = self.get(job_id)
        ckpt = self.store.checkpoint(job.id, ckpt_id) if re.fullmatch(CHECKPOINT_ID_PATTERN, ckpt_id) else None
        if ckpt is None:
            raise CheckpointNotFound(job_id, ckpt_id)
        location = self._location(ckpt.path)
        if storage.is_local(location):
            location = str(Path(storage.local_path(location)).resolve())
        if location.split("/")[-3:] != [job.id, "checkpoints", f"{ckpt.id}.tar.gz"] \
                or not storage.exists(location):
            raise CheckpointNotFound(job_id, ckpt.id)
        return location, f"{job.id}-{ckpt.id}.tar.gz"


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
