"""`JobManager`: submits, queues, runs, stops and recovers the API's training jobs.

Each admitted job runs `Trainer.run()` in its own driver process (`service.run.driver`),
watched by a thread of the server that replays the driver's sink calls into the job store
(`service.jobs.sink.StoreSink`). Which queued job starts when is the admission policy's
(`service.jobs.scheduler`); reads for the API are `service.jobs.queries`'. See
docs/architecture.md for the whole flow.

States: PENDING -> RUNNING (on the trainer's "started" event) -> SUCCEEDED | FAILED | STOPPED.
A RUNNING job goes back to PENDING, resumable from its last checkpoint, when the server shuts
down or when the admission policy preempts it for the job at the head of the queue.

Threads: request threads call `submit` and `stop`; the scheduler thread admits jobs; one thread
per running job replays its driver's sink calls. They share `_cond`, which is never held while
waiting on Ray or on a driver (the cluster's CPU count comes from `ClusterCapacity`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from learner.checkpoint import CheckpointRejected
from service import storage
from service.cluster import cluster_cpus, driver_address
from service.jobs.errors import CheckpointNotFound, IdempotencyKeyReused, JobFinished, JobNotFound
from service.jobs.capacity import ClusterCapacity
from service.jobs.locations import JobLocations
from service.jobs.scheduler import Queued, Running, plan
from service.jobs.sink import StoreSink
from service.records import CHECKPOINT_ID_PATTERN, JOB_ID_PATTERN, JobStatus, new_job_id
from service.run.checkpoints import read_checkpoint
from service.run.driver import DriverRequest, JobProcess
from service.run.warm import WARM_WORKERS
from service.run.spec import InvalidSpec, JobSpec, archived_spec, build_spec, job_spaces
from service.store import JobRow, JobStore

log = logging.getLogger(__name__)


class ResumeFrom(BaseModel):
    """Where a submitted job continues from: a checkpoint of an earlier job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(pattern=JOB_ID_PATTERN, examples=["3f2a9c0b1d4e"])
    """The earlier job."""
    checkpoint: str = Field("latest", pattern=CHECKPOINT_ID_PATTERN, examples=["latest", "best", "step-0000051200"])
    """One of its checkpoint ids, `latest` or `best` (the highest evaluation return)."""


@dataclass(frozen=True)
class JobLimits:
    """What this server accepts and how it schedules (from the API settings)."""

    max_total_steps: int = 50_000_000
    max_workers_per_job: int = 64
    max_concurrent_jobs: int = 4
    resource_timeout_s: float = 600.0
    max_recoveries: int = 3
    """A job RUNNING when the server died is resumed at most this many times."""


@dataclass
class _Active:
    """A job admitted to run: its CPU reservation, its driver process once started, and why it
    may be asked to end early."""

    cpus: int
    backfilled: bool = False
    """It started while a job ahead of it in the queue waited for CPUs (see the scheduler)."""
    driver: JobProcess | None = None
    stop: bool = False
    """A user asked it to stop: it ends STOPPED."""
    preempted: bool = False
    """The admission policy asked it to stop for the head job: it is requeued."""
    abandoned: bool = False
    """The server shut down past its grace and cut its driver off: it is requeued."""
    thread: threading.Thread | None = field(default=None, repr=False)

    def request_stop(self) -> None:
        """Ask its driver (once there is one) to stop after the current update."""
        if self.driver is not None:
            self.driver.request_stop()


_STARTING: Any = object()
"""The spare's place while its process is being made (outside the manager's lock)."""


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


class JobManager:
    """Runs the service's jobs: submit, stop, schedule, and recovery after a restart.

    `driver` makes a job's driver process from its `DriverRequest` (`JobProcess`; tests give
    a stand-in with the same methods). With `warm_jobs`, the manager keeps a spare driver with
    warm actors (`service.run.warm`) for the next job, made again whenever a job ends.
    """

    def __init__(self, store: JobStore, locations: JobLocations, limits: JobLimits | None = None,
                 cluster_cpus: Callable[[], float] = cluster_cpus, ray_address: str | None = None,
                 driver: Callable[[DriverRequest], JobProcess] = JobProcess, warm_jobs: bool = False) -> None:
        self.store, self.locations = store, locations
        self.ray_address = ray_address
        """The Ray cluster the jobs' driver processes join (default: the one this process is on)."""
        self.limits = limits or JobLimits()
        self.cluster_cpus = cluster_cpus
        """Asks Ray for the cluster's CPU count (may block: only `capacity` calls it)."""
        self.driver = driver
        self._cond = threading.Condition()
        self._queue: list[tuple[float, str]] = []
        """(created, job id) of the queued jobs, in submission order."""
        self._active: dict[str, _Active] = {}
        """The running jobs, in the order they started."""
        self._closing = False
        self._scheduler: threading.Thread | None = None
        self.capacity = ClusterCapacity(cluster_cpus, on_change=self._wake)
        self.warm_jobs = warm_jobs
        self._spare: JobProcess | None = None
        """A driver process waiting for the next job, with warm actors (when `warm_jobs`)."""

    def _get(self, job_id: str) -> JobRow:
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _enqueue(self, job: JobRow) -> None:
        """Put a job in the queue at its place by submission time (holds _cond)."""
        bisect.insort(self._queue, (job.created, job.id))

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # Lifecycle of the manager

    def start(self) -> None:
        """Take care of jobs left unfinished by the previous server, then start scheduling."""
        self._recover()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="job-scheduler", daemon=True)
        self._scheduler.start()
        self._keep_spare()

    def _keep_spare(self) -> None:
        """Start a spare driver if there is none: it warms its actors while nothing waits for them.

        Called at start and when a job ends, so that warming (a few CPU-seconds of imports)
        happens when CPUs were just freed, not while a job that took the last spare starts.
        """
        if not self.warm_jobs:
            return
        with self._cond:
            if self._closing or self._spare is _STARTING or (
                    self._spare is not None and self._spare.process.is_alive()):
                return
            self._spare = starting = _STARTING
        spare = JobProcess(None, self.ray_address or driver_address(), WARM_WORKERS)  # not under the lock
        with self._cond:
            if self._spare is starting and not self._closing:
                self._spare = spare
                return
        spare.abandon()  # the server is closing, or a job took the place meanwhile

    def spare_state(self) -> str:
        """What the spare driver is doing, for /readyz: off, starting, warming or ready."""
        with self._cond:
            spare = self._spare
        if not self.warm_jobs:
            return "off (A2C_WARM_JOBS)"
        if spare is None or spare is _STARTING:
            return "starting"
        return spare.warm_state()

    def _take_spare(self, request: DriverRequest) -> JobProcess | None:
        """The spare driver, given `request` as its job; None when there is no live spare."""
        with self._cond:
            spare, self._spare = self._spare, None
        if spare is _STARTING:  # still being made: this job starts its own
            return None
        if spare is not None and spare.assign(request):
            return spare
        if spare is not None:
            spare.abandon()
        return None

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop scheduling and ask running jobs to stop; they resume at the next start.

        Each running job writes a final checkpoint and goes back to PENDING. A job that does not
        finish within `grace_s` has its driver cut off and goes back to PENDING too, to resume
        from its last checkpoint: the server's own shutdown never fails a job. Returns once the
        jobs' threads have recorded that (or after a few more seconds).
        """
        with self._cond:
            self._closing = True
            self._queue.clear()
            active = list(self._active.values())
            for job in active:
                job.request_stop()
            self._cond.notify_all()
        deadline = time.monotonic() + grace_s
        for job in active:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            late = [job for job in active if job.thread is not None and job.thread.is_alive()]
            for job in late:  # past the grace: their drivers exit now
                job.abandoned = True
                if job.driver is not None:
                    job.driver.abandon()
        deadline = time.monotonic() + 10
        for job in late:
            job.thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            spare, self._spare = self._spare, None
        if spare is not None and spare is not _STARTING:
            spare.abandon()
        self.capacity.stop()
        if self._scheduler is not None:
            self._scheduler.join(5)

    def _recover(self) -> None:
        """Requeue jobs the previous server left PENDING or RUNNING (its Ray died with it)."""
        for job in self.store.unfinished_jobs():
            latest = self.store.checkpoint(job.id, "latest")
            running = job.status == JobStatus.RUNNING
            if job.stop_requested:
                self.store.finish(job.id, JobStatus.STOPPED, error=None)
                self.store.add_event(job.id, "recovered", "the server restarted after a stop request; "
                                     + (f"{latest.id} is the final checkpoint" if latest else "no checkpoint"))
                continue
            if running and job.recoveries >= self.limits.max_recoveries:
                self.store.finish(job.id, JobStatus.FAILED, error_type="ServerRestarted", error=(
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
            self._enqueue(job)

    # Submitting

    def submit(self, raw: Any, idempotency_key: str | None = None,
               sweep_id: str | None = None) -> tuple[JobRow, bool]:
        """Validate a raw job spec and queue the job; returns (job, replayed).

        `replayed` is True when the Idempotency-Key was seen before with the same body: the
        earlier job comes back and nothing new is queued. Raises InvalidSpec naming the field.
        `sweep_id`: the job is a trial of that sweep (service/sweeps).
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
            data = _merge_spec(archived_spec(resume.config), data)
        spec = build_spec(data, strict=True)  # JSON: types must match the schema
        self._check_limits(spec, resume)
        job, created = self.store.create_job(
            new_job_id(), spec.model_dump(mode="json"), idempotency_key=idempotency_key,
            request_hash=request_hash,
            resumed_from_job=resume_from.job_id if resume_from else None,
            resumed_from_checkpoint=resume_ckpt.id if resume_ckpt else None,
            resume_path=resume_ckpt.path if resume_ckpt else None,
            resume_step=resume_ckpt.step if resume_ckpt else 0, sweep_id=sweep_id)
        if not created:  # a concurrent request with the same key won the race
            if job.request_hash != request_hash:
                raise IdempotencyKeyReused()
            return job, True
        if resume_ckpt is not None:
            self.store.add_event(job.id, "resume", f"continues job {resume_from.job_id} from "
                                 f"{resume_ckpt.id} (step {resume_ckpt.step})")
        with self._cond:
            self._enqueue(job)
            self._cond.notify_all()
        return job, False

    def check_spec(self, raw: dict[str, Any]) -> JobSpec:
        """The job spec `submit` would queue for `raw` (no resume_from), without queueing it:
        raises InvalidSpec naming the field, as `submit` does."""
        spec = build_spec(raw, strict=True)
        self._check_limits(spec, None)
        return spec

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
            # locations.archive refuses a record whose location is not this job's checkpoint.
            archive = read_checkpoint(self.locations.archive(self.store, resume_from.job_id, ckpt.id)[1])
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
        cpus = self.capacity()  # the count last seen: a request never waits on Ray
        if cpus is not None and spec.cpus_needed > cpus:
            raise InvalidSpec("workers", f"{spec.workers} workers and the learner (learner_cpus={spec.learner_cpus}) "
                              f"need {spec.cpus_needed} CPUs; the cluster has {cpus:g}")
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
                except Exception:  # noqa: BLE001 - e.g. the store briefly locked; try again later
                    log.exception("scheduling failed; retrying")
                self._cond.wait(timeout=5.0)

    def _admit(self) -> None:
        """Carry out the admission policy's plan for the queue now (holds _cond)."""
        queued: dict[str, tuple[JobRow, JobSpec]] = {}
        for created, job_id in list(self._queue):
            job = self.store.get_job(job_id)
            if job is None or job.finished:
                self._queue.remove((created, job_id))
                continue
            try:  # a stored record: it validated once, but this version may not run it
                queued[job_id] = job, JobSpec.model_validate(job.spec)
            except (ValidationError, InvalidSpec, TypeError) as exc:
                self._queue.remove((created, job_id))
                self.store.finish(job.id, JobStatus.FAILED, error_type="InvalidStoredSpec", error=(
                    f"its stored spec cannot run: {_first_error(exc)}; submit the job again"))
        decision = plan([Queued(job_id, spec.cpus_needed) for job_id, (_, spec) in queued.items()],
                        [Running(job_id, a.cpus, a.backfilled, a.preempted or a.stop)
                         for job_id, a in self._active.items()],
                        self.capacity.latest, self.limits.max_concurrent_jobs)
        for job_id, reason in decision.fail:
            self._queue.remove((queued[job_id][0].created, job_id))
            self.store.finish(job_id, JobStatus.FAILED, error_type="Unschedulable", error=reason)
        gone = {q.job_id for q, _ in decision.start} | {job_id for job_id, _ in decision.fail}
        head = next((job_id for job_id in queued if job_id not in gone), None)
        for job_id in decision.preempt:
            active = self._active[job_id]
            active.preempted = True
            active.request_stop()
            self.store.add_event(job_id, "preempted", f"job {head} at the head of the queue needs its "
                                 "CPUs: stopping after this update with a checkpoint, to resume later")
        for need, backfilled in decision.start:
            job, _ = queued[need.job_id]
            self._queue.remove((job.created, job.id))
            active = _Active(cpus=need.cpus, backfilled=backfilled, stop=job.stop_requested)
            active.thread = threading.Thread(target=self._run, args=(job, active), name=f"job-{job.id}",
                                             daemon=True)
            self._active[job.id] = active
            if backfilled:
                self.store.add_event(job.id, "backfill", f"starts ahead of job {head}, which waits for "
                                     "more CPUs; it is paused (checkpointed and requeued) if that job needs them")
            active.thread.start()

    def _run(self, job: JobRow, active: _Active) -> None:
        """Train one job to its end in a driver process and record the outcome (runs in the job's thread)."""
        sink: StoreSink | None = None
        try:
            with self._cond:
                stopped = active.stop
            if stopped:  # stopped between its admission and now: no driver, no actor, no checkpoint
                self.store.finish(job.id, JobStatus.STOPPED)
                return
            location = self.locations.job(job.id)
            sink = StoreSink(self.store, job.id, self.locations.record, job.spec,
                             self.locations.tensorboard_root, str(self.locations.data_dir))
            request = DriverRequest(
                job.id, job.spec, location, self.locations.resolve(job.resume_path) if job.resume_path else None,
                job.resume_path, self.limits.resource_timeout_s, self.ray_address or driver_address())
            driver = (self._take_spare(request) if self.warm_jobs else None) or self.driver(request)
            with self._cond:
                active.driver = driver
                if active.abandoned:
                    driver.abandon()
                elif active.stop or active.preempted or self._closing:
                    driver.request_stop()
            summary, ckpt = driver.run(sink)
            summary["checkpoint"] = ckpt.id if ckpt else None  # an id, not a server path
            # The best of the whole job (runs before a resume included), as `best` resolves it.
            best = self.store.checkpoint(job.id, "best")
            summary["best_checkpoint"] = best.id if best else None
            summary["best_eval_return_mean"] = best.eval_return_mean if best else None
            requeue = summary["status"] == JobStatus.STOPPED and not active.stop and (active.preempted or self._closing)
            sink.close(JobStatus.PENDING if requeue else summary["status"])  # before the job's end is recorded
            if requeue:
                why = ("the admission policy paused it for the job at the head of the queue" if active.preempted
                       else "the server shut down")
                self._requeue(job, f"{why}; it resumes from {ckpt.id if ckpt else 'its start'}",
                              self.locations.record(ckpt.location) if ckpt else job.resume_path,
                              ckpt.step if ckpt else job.resume_step)
            else:
                self.store.finish(job.id, summary["status"], summary=summary)
        except Exception as exc:  # noqa: BLE001 - any failure ends the job FAILED with the reason
            if sink is not None:
                sink.close(JobStatus.PENDING if active.abandoned else JobStatus.FAILED)
            if active.abandoned:  # the server's own shutdown cut the driver off: not the job's fault
                latest = self.store.checkpoint(job.id, "latest")
                self._requeue(job, "the server shut down before the job wrote a final checkpoint; it resumes "
                              f"from {latest.id if latest else 'its start'} at the next start",
                              latest.path if latest else job.resume_path, latest.step if latest else job.resume_step)
                return
            error_type = getattr(exc, "error_type", type(exc).__name__)
            log.warning("job %s failed: %s: %s", job.id, error_type, exc)
            self.store.finish(job.id, JobStatus.FAILED, error=str(exc) or error_type, error_type=error_type)
        finally:
            with self._cond:
                self._active.pop(job.id, None)
                self._cond.notify_all()
            self._keep_spare()

    def _requeue(self, job: JobRow, reason: str, resume_path: str | None, resume_step: int) -> None:
        """Put a job that was cut short back to PENDING, to resume from `resume_path`; while the
        server runs on, back in the queue at its place."""
        self.store.requeue(job.id, resume_path, resume_step, reason=reason)
        with self._cond:
            if not self._closing:
                self._enqueue(job)

    def wait_state(self, job_id: str) -> dict[str, Any] | None:
        """Why a PENDING job waits, for the API: {"place": 1-based place in the queue, "queued": queue
        length, "cpus_needed", "cpus_free", "cpus_total"} (CPU counts None until Ray answered),
        or {"starting": True} once admitted and starting its actors; None if it is not waiting."""
        job = self.store.get_job(job_id)
        if job is None or job.status != JobStatus.PENDING:
            return None
        with self._cond:
            if job_id in self._active:
                return {"starting": True}
            ids = [q[1] for q in self._queue]
            if job_id not in ids:
                return None
            used = sum(a.cpus for a in self._active.values())
        try:
            needed = JobSpec.model_validate(job.spec).cpus_needed if job else None
        except (ValidationError, InvalidSpec, TypeError):
            needed = None
        total = self.capacity.latest
        return {"starting": False, "place": ids.index(job_id) + 1, "queued": len(ids), "cpus_needed": needed,
                "cpus_free": max(total - used, 0) if total is not None else None, "cpus_total": total}

    def stop(self, job_id: str, reason: str = "stop requested") -> JobRow:
        """Ask a job to stop: a running one ends after its current update with a final checkpoint
        (then STOPPED); a queued one is STOPPED at once. `reason` goes into its events. Raises
        JobFinished if it already ended."""
        self._get(job_id)
        with self._cond:
            if not self.store.request_stop(job_id, reason):
                raise JobFinished(job_id, self._get(job_id).status)
            active = self._active.get(job_id)
            if active is not None:
                active.stop = True
                active.request_stop()
            else:
                self._queue = [q for q in self._queue if q[1] != job_id]
                self.store.finish(job_id, JobStatus.STOPPED)
        return self._get(job_id)


def _first_error(exc: Exception) -> str:
    """The first problem a validation error names, with its field."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidSpec):  # a check across fields, which names its field
            return str(cause)
        return f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg'].removeprefix('Value error, ')}"
    return str(exc)
