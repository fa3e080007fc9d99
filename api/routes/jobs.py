"""Routes of /jobs: submit, list, describe, stop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Query, Response, status
from pydantic import SkipValidation

from api.deps import Authenticated, ManagerDep, QueriesDep
from api.routing import StrictQueryRoute
from api.schemas import JobCreate, JobDetail, JobPublic, JobsPublic, JobStatus
from service.records import JOB_ID_PATTERN

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Authenticated], route_class=StrictQueryRoute)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (12 hex digits).")]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
    description="Any unique string; a retry with the same key and body returns the same job.")]


JOB_EXAMPLES = {
    "cartpole": {"summary": "CartPole, tuned values for the rest",
                 "description": "Fields left out take the env's tuned values (GET /envs/{env}/defaults) "
                                "or the schema's defaults.",
                 "value": {"env": "CartPole-v1", "total_steps": 100000, "workers": 2, "seed": 0}},
    "explicit": {"summary": "Pendulum with algorithm and policy settings",
                 "value": {"env": "Pendulum-v1", "total_steps": 200000, "workers": 2, "envs_per_worker": 8,
                           "a2c": {"steps_per_batch": 1024, "learning_rate": 0.001, "gamma": 0.9},
                           "policy": {"hidden_sizes": [64, 64]}}},
    "resume": {"summary": "Continue an earlier job from its latest checkpoint",
               "value": {"resume_from": {"job_id": "0123456789ab", "checkpoint": "latest"},
                         "total_steps": 200000}},
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic,
             responses={404: {"description": "Unknown job"}, 422: {"description": "The field at fault is in `loc`"}})
def create_job(body: Annotated[JobCreate, SkipValidation, Body(title="JobCreate", openapi_examples=JOB_EXAMPLES)],
               manager: ManagerDep,
               response: Response, idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Submit a training job; it starts in the background (PENDING until its actors run)."""
    job, replayed = manager.submit(body, idempotency_key)
    response.headers["Location"] = f"/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.from_row(job)


@router.get("", response_model=JobsPublic)
def list_jobs(queries: QueriesDep,
              status_: Annotated[list[JobStatus] | None, Query(alias="status", description="Only these states (repeatable).")] = None,
              max_results: Annotated[int, Query(ge=1, le=500)] = 50,
              page_token: Annotated[str | None, Query(max_length=200)] = None,
              sweep_id: Annotated[str | None, Query(pattern=JOB_ID_PATTERN, description="Only this sweep's trials.")] = None,
              ) -> JobsPublic:
    """Jobs, newest first, a page at a time; each with its spec (`name`, `tags`, seed, config)
    and its sweep (`sweep_id`, null for a single job)."""
    jobs, token = queries.list(status_, max_results, page_token, sweep_id)
    return JobsPublic(jobs=[JobPublic.from_row(j) for j in jobs], next_page_token=token)


@router.get("/{job_id}", response_model=JobDetail, response_model_exclude_unset=True, responses={404: {"description": "Unknown job"}})
def get_job(job_id: JobId, queries: QueriesDep, manager: ManagerDep) -> JobDetail:
    """Status, progress, latest metrics, final and best evaluation, timings, error if it failed,
    recent events, and while PENDING why it waits (`queue`)."""
    details = queries.describe(job_id)
    queue = manager.wait_state(job_id) if details.job.status == JobStatus.PENDING else None
    return JobDetail.from_details(details, queue)


@router.post("/{job_id}/stop", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={404: {"description": "Unknown job"}, 409: {"description": "The job already finished"}})
def stop_job(job_id: JobId, manager: ManagerDep) -> JobPublic:
    """Stop gracefully: the job ends after its current update with a final checkpoint, then STOPPED."""
    return JobPublic.from_row(manager.stop(job_id))
