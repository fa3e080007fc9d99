"""Routes of /sweeps: submit, list, describe, stop; and the trials' own route (docs/sweeps.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status
from pydantic import SkipValidation

from api.deps import Authenticated, SweepsDep
from api.routes.jobs import IdempotencyKey
from api.routing import StrictQueryRoute
from api.schemas import JobPublic, SweepCreate, SweepDetail, SweepPublic, SweepsPublic, TrialCreate
from service.sweeps.manager import SWEEP_ID_PATTERN

router = APIRouter(prefix="/sweeps", tags=["sweeps"], dependencies=[Authenticated], route_class=StrictQueryRoute)

SweepId = Annotated[str, Path(pattern=SWEEP_ID_PATTERN, description="A sweep id (12 hex digits).")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepPublic,
             responses={422: {"description": "The path at fault is in `loc`, e.g. body.space.a2c.learning_rate"}})
def create_sweep(body: Annotated[SweepCreate, SkipValidation, Body(title="SweepCreate")], sweeps: SweepsDep,
                 response: Response, idempotency_key: IdempotencyKey = None) -> SweepPublic:
    """Start a sweep on Ray Tune: trials of `base` with values from `space`, each one a job."""
    sweep, replayed = sweeps.submit(body, idempotency_key)
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return SweepPublic.from_row(sweep)


@router.get("", response_model=SweepsPublic)
def list_sweeps(sweeps: SweepsDep, max_results: Annotated[int, Query(ge=1, le=500)] = 50) -> SweepsPublic:
    """Sweeps, newest first."""
    return SweepsPublic(sweeps=[SweepPublic.from_row(s) for s in sweeps.list(max_results)])


@router.get("/{sweep_id}", response_model=SweepDetail, responses={404: {"description": "Unknown sweep"}})
def get_sweep(sweep_id: SweepId, sweeps: SweepsDep) -> SweepDetail:
    """State, the trials with their values and best metric, and the best trial with its best checkpoint."""
    return SweepDetail.from_details(sweeps.describe(sweep_id))


@router.post("/{sweep_id}/stop", status_code=status.HTTP_202_ACCEPTED, response_model=SweepPublic,
             responses={404: {"description": "Unknown sweep"}, 409: {"description": "The sweep already finished"}})
def stop_sweep(sweep_id: SweepId, sweeps: SweepsDep) -> SweepPublic:
    """Stop the sweep: no new trials; every running trial job stops with a final checkpoint."""
    return SweepPublic.from_row(sweeps.stop(sweep_id))


@router.post("/{sweep_id}/trials", status_code=status.HTTP_201_CREATED, response_model=JobPublic,
             responses={404: {"description": "Unknown sweep"}, 409: {"description": "The sweep ended or is stopping"}})
def create_trial(sweep_id: SweepId, body: TrialCreate, sweeps: SweepsDep, response: Response) -> JobPublic:
    """The job of one trial (called by the sweep's Ray Tune trials): made on the first call,
    the same job after."""
    job, replayed = sweeps.add_trial(sweep_id, body.trial_id, body.config)
    response.headers["Location"] = f"/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.from_row(job)
