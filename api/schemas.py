"""Request and response models of the HTTP API, split by role (create, public, list)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from service.jobs.manager import ResumeFrom
from service.jobs.queries import JobDetails
from service.records import JobStatus, MetricsRow
from service.run.spec import JobSpec
from service.store import CheckpointRow, EventRow, JobRow, SweepRow
from service.sweeps.manager import SweepDetails, TrialView
from service.sweeps.spec import SweepSpec


def _time(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc) if ts is not None else None


def _job_create_model() -> type[BaseModel]:
    """The POST /jobs body: JobSpec's fields (less the service-set `tuned`) plus `resume_from`.

    Only for the OpenAPI schema: the route takes the raw JSON and validates it once, with
    `build_spec`, so that fields left out can come from the tuned table or, on resume, from
    the checkpoint's config.
    """
    fields: dict[str, Any] = {name: (f.annotation, f) for name, f in JobSpec.model_fields.items()
                              if name != "tuned"}
    fields["env"] = (str | None, Field(None, examples=["CartPole-v1"], description=(
        "A registered gymnasium env id (see `a2c envs`). Required unless `resume_from` is given.")))
    return create_model(
        "JobCreate", __config__=ConfigDict(extra="forbid"),
        __doc__=("A job spec (the schema of `a2c train --config`). With `resume_from`, training "
                 "continues from that checkpoint and fields left out come from its config."),
        resume_from=(ResumeFrom | None, Field(None, description="Continue from a checkpoint of an earlier job.")),
        **fields)


JobCreate = _job_create_model()


class Progress(BaseModel):
    """How far a job is: env steps trained of the total."""

    step: int
    total_steps: int
    fraction: float


class ErrorInfo(BaseModel):
    """Why a job FAILED."""

    type: str
    message: str


class EventPublic(BaseModel):
    """A line of a job's history (submitted, device, started, checkpoint, stop, ...)."""

    time: datetime
    kind: str
    message: str

    @classmethod
    def from_row(cls, row: EventRow) -> "EventPublic":
        """From the store's record."""
        return cls(time=_time(row.time), kind=row.kind, message=row.message)


class JobPublic(BaseModel):
    """A job as listed: id, state, spec, progress, timings, error."""

    id: str
    status: JobStatus
    env: str
    spec: dict[str, Any] = Field(description=(
        "The job spec as validated when it was submitted: JobCreate's fields, with the values "
        "taken from the tuned table filled in and listed in `tuned`. A stored record, shown as "
        "stored: it is not validated again (an env since unregistered still lists)."))
    progress: Progress
    created: datetime
    started: datetime | None = Field(description="When it first became RUNNING.")
    ended: datetime | None
    error: ErrorInfo | None = None
    stop_requested: bool = False
    resumed_from: ResumeFrom | None = None
    sweep_id: str | None = Field(None, description="The sweep this job is a trial of, if any.")

    @classmethod
    def from_row(cls, job: JobRow, **extra: Any) -> "JobPublic":
        """From the store's record."""
        return cls(
            id=job.id, status=job.status, env=job.env, spec=job.spec,
            progress=Progress(step=job.step, total_steps=job.total_steps,
                              fraction=round(min(job.step / job.total_steps, 1.0), 4)),
            created=_time(job.created), started=_time(job.started), ended=_time(job.ended),
            error=ErrorInfo(type=job.error_type or "Error", message=job.error) if job.error else None,
            stop_requested=job.stop_requested,
            resumed_from=(ResumeFrom(job_id=job.resumed_from_job, checkpoint=job.resumed_from_checkpoint)
                          if job.resumed_from_job else None),
            sweep_id=job.sweep_id, **extra)


class QueueState(BaseModel):
    """Why a PENDING job waits: its place in the queue and the CPUs it needs, or that it is starting."""

    starting: bool = Field(description="Admitted: its actors are starting (it turns RUNNING when they run).")
    place: int | None = Field(None, description="1 for the head of the queue.")
    queued: int | None = Field(None, description="Jobs in the queue.")
    cpus_needed: int | None = None
    cpus_free: float | None = Field(None, description="CPUs of the cluster not held by running jobs (null until Ray answered).")
    cpus_total: float | None = None


class EvalSummary(BaseModel):
    """A job's deterministic evaluations so far (`eval_return_mean` of its metrics rows)."""

    final: float
    best: float
    count: int


class JobDetail(JobPublic):
    """One job in full: also its latest metrics row, summary when finished, and history."""

    latest_metrics: MetricsRow | None = None
    summary: dict[str, Any] | None = Field(None, description="The trainer's summary once the job ended.")
    events: list[EventPublic] = []
    evaluation: EvalSummary | None = Field(None, description="Final and best evaluation return, once it has one.")
    queue: QueueState | None = Field(None, description="Only while PENDING: why it waits.")

    @classmethod
    def from_details(cls, details: JobDetails, queue: dict[str, Any] | None = None) -> "JobDetail":
        """From the manager's view of a job, with `queue` from `JobManager.wait_state`."""
        extra: dict[str, Any] = {"evaluation": details.evaluation} if details.evaluation else {}
        if queue is not None:
            extra["queue"] = queue
        return cls.from_row(details.job, latest_metrics=details.latest_metrics,
                            summary=details.job.summary,
                            events=[EventPublic.from_row(e) for e in details.events], **extra)


class JobsPublic(BaseModel):
    """A page of jobs, newest first."""

    jobs: list[JobPublic]
    next_page_token: str | None = Field(description="Pass as page_token for the next page; null at the end.")


class MetricsPublic(BaseModel):
    """Metrics rows of a job in step order."""

    job_id: str
    status: JobStatus
    rows: list[MetricsRow]
    next_since_step: int = Field(description="Pass as since_step to get only newer rows.")


class CheckpointPublic(BaseModel):
    """A checkpoint archive of a job."""

    id: str
    step: int
    eval_return_mean: float | None = Field(description=(
        "Mean return of the deterministic evaluation at this step; null when none ran at it."))
    best: bool = Field(description="Whether this is the job's `best` checkpoint (highest eval_return_mean).")
    return_mean: float | None = Field(description="Mean return of the last 20 training episodes.")
    size_bytes: int
    created: datetime
    archive_url: str

    @classmethod
    def from_row(cls, job_id: str, row: CheckpointRow, best: bool = False) -> "CheckpointPublic":
        """From the store's record."""
        return cls(id=row.id, step=row.step, eval_return_mean=row.eval_return_mean, best=best,
                   return_mean=row.return_mean, size_bytes=row.size_bytes,
                   created=_time(row.created), archive_url=f"/jobs/{job_id}/checkpoints/{row.id}/archive")


class CheckpointsPublic(BaseModel):
    """A job's checkpoints in step order."""

    job_id: str
    checkpoints: list[CheckpointPublic]


class VideoPublic(BaseModel):
    """A video of one deterministic evaluation episode, recorded while the job trained."""

    id: str = Field(description="`step-<10 digits>`: the step of the evaluation it shows.")
    step: int
    episode_return: float = Field(alias="return", description="The episode's return (raw rewards).")
    length: int = Field(description="Env steps in the episode.")
    frames: int = Field(description="Frames in the video: the reset frame and one per env step.")
    fps: float
    size_bytes: int
    complete: bool = Field(description="false when the episode was cut at the recording's step limit.")
    url: str = Field(description="GET it for the MP4 (H.264; Range requests are answered).")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    @classmethod
    def from_sidecar(cls, job_id: str, meta: dict) -> "VideoPublic":
        """From a video's sidecar (`service.run.videos`)."""
        return cls(id=meta["id"], step=meta["step"], episode_return=meta["return"], length=meta["length"],
                   frames=meta["frames"], fps=meta["fps"], size_bytes=meta["size"],
                   complete=meta.get("complete", True), url=f"/jobs/{job_id}/videos/{meta['id']}")


class VideosPublic(BaseModel):
    """A job's videos in step order."""

    job_id: str
    videos: list[VideoPublic]


class ActRequest(BaseModel):
    """A batch of observations for a checkpoint's policy (POST /jobs/{id}/checkpoints/{ckpt}/act)."""

    model_config = ConfigDict(extra="forbid")

    observations: list[Any] = Field(
        examples=[[[0.01, -0.02, 0.03, 0.04]]],
        description=("A batch of observations, batch first: (B, *obs_shape) nested lists of numbers, "
                     "raw as the env gives them (integers 0..255 for image policies). At least 1, at "
                     "most A2C_ACT_MAX_BATCH."))
    deterministic: bool = Field(True, description=(
        "The most likely action (argmax; the Gaussian mean) as evaluation plays, or one sampled "
        "from the policy's distribution."))
    include_values: bool = Field(False, description="Also return the state values V(obs).")


class ActPublic(BaseModel):
    """The policy's actions for a batch of observations."""

    job_id: str
    checkpoint: str = Field(description="The checkpoint id that answered (what `latest` or `best` stood for).")
    actions: list[Any] = Field(description=(
        "One action per observation: an integer for a Discrete action space; for a Box, nested "
        "lists of floats of the action shape, clipped to the action bounds."))
    values: list[float] | None = Field(None, description="V(obs) per observation, when include_values was true.")


class Health(BaseModel):
    """Liveness or readiness, with the reason for each check."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}


# Sweeps (service/sweeps)

SweepCreate = SweepSpec
"""The POST /sweeps body (docs/sweeps.md); validated by the sweep service, which names the path at fault."""


class TrialCreate(BaseModel):
    """The POST /sweeps/{id}/trials body: what Ray Tune sampled for one trial."""

    model_config = ConfigDict(extra="forbid")

    trial_id: str = Field(max_length=64, examples=["4c003_00001"])
    config: dict[str, Any] = Field(description="Tune's sample: a value per space path (a choice's index).")


class SweepPublic(BaseModel):
    """A sweep as listed: id, state, spec, timings, and why it is in its state."""

    id: str
    status: JobStatus
    spec: dict[str, Any]
    created: datetime
    started: datetime | None
    ended: datetime | None
    message: str | None = Field(None, description="Why it ended as it did (or how it runs).")
    stop_requested: bool = False

    @classmethod
    def from_row(cls, sweep: SweepRow, **extra: Any) -> "SweepPublic":
        """From the store's record."""
        return cls(id=sweep.id, status=sweep.status, spec=sweep.spec, created=_time(sweep.created),
                   started=_time(sweep.started), ended=_time(sweep.ended), message=sweep.reason,
                   stop_requested=sweep.stop_requested, **extra)


class TrialPublic(BaseModel):
    """One trial of a sweep: its job, its values, and the best value of the sweep's metric so far."""

    trial_id: str | None
    job_id: str
    status: JobStatus
    config: dict[str, Any] = Field(description="The trial's value at each space path.")
    best_metric: float | None = Field(description="The best value of the sweep's metric in the job's rows.")
    best_step: int | None = Field(description="The step of the row that has it.")
    step: int
    error: ErrorInfo | None = None

    @classmethod
    def from_view(cls, trial: TrialView) -> "TrialPublic":
        """From the sweep service's view."""
        job = trial.job
        return cls(trial_id=trial.trial_id, job_id=job.id, status=job.status, config=trial.config,
                   best_metric=trial.best, best_step=trial.best_step, step=job.step,
                   error=ErrorInfo(type=job.error_type or "Error", message=job.error) if job.error else None)


class BestTrial(TrialPublic):
    """The sweep's best trial so far, with its best checkpoint (the job's `best`: highest evaluation return)."""

    checkpoint: CheckpointPublic | None = None


class SweepDetail(SweepPublic):
    """One sweep in full: its trials, the best one, and trials that errored."""

    trials: list[TrialPublic]
    best_trial: BestTrial | None
    trial_errors: dict[str, str] = Field(description="Tune trial id -> why it errored.")

    @classmethod
    def from_details(cls, details: SweepDetails) -> "SweepDetail":
        """From the sweep service's view."""
        best = None
        if details.best is not None:
            ckpt = details.best_checkpoint
            best = BestTrial(**TrialPublic.from_view(details.best).model_dump(),
                             checkpoint=CheckpointPublic.from_row(details.best.job.id, ckpt) if ckpt else None)
        return cls.from_row(details.sweep, trials=[TrialPublic.from_view(t) for t in details.trials],
                            best_trial=best, trial_errors=details.sweep.trial_errors)


class SweepsPublic(BaseModel):
    """Sweeps, newest first."""

    sweeps: list[SweepPublic]
