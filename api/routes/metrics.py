"""Routes of /jobs/{id}/metrics: rows by step, and the same rows live as server-sent events."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, Header, Path, Query
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import Authenticated, ManagerDep, SettingsDep
from api.schemas import MetricsPublic, MetricsRow
from service.jobs import JOB_ID_PATTERN, JobManager

router = APIRouter(prefix="/jobs/{job_id}/metrics", tags=["metrics"], dependencies=[Authenticated])

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (12 hex digits).")]
SinceStep = Annotated[int, Query(ge=0, description="Only rows with a larger step.")]
STREAM_BATCH = 500


@router.get("", response_model=MetricsPublic, response_model_exclude_unset=True, responses={404: {"description": "Unknown job"}})
def get_metrics(job_id: JobId, manager: ManagerDep, since_step: SinceStep = 0,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> MetricsPublic:
    """Metrics rows in step order; poll with `since_step=next_since_step` for newer ones."""
    job, rows = manager.metrics(job_id, since_step, limit)
    return MetricsPublic(job_id=job.id, status=job.status, rows=[MetricsRow(**r) for r in rows],
                         next_since_step=rows[-1]["step"] if rows else since_step)


async def metrics_events(manager: JobManager, job_id: str, since_step: int,
                         poll_s: float) -> AsyncIterator[ServerSentEvent]:
    """`metrics` events (id = step) as rows arrive, then one `end` event when the job ends."""
    last = since_step
    while True:
        job, rows = await asyncio.to_thread(manager.metrics, job_id, last, STREAM_BATCH)
        for row in rows:
            yield ServerSentEvent(json.dumps(row), event="metrics", id=str(row["step"]))
        if rows:
            last = rows[-1]["step"]
            continue
        if job.finished:  # read before the rows: no row can follow
            yield ServerSentEvent(json.dumps({"status": job.status, "step": job.step}), event="end")
            return
        await asyncio.sleep(poll_s)


@router.get("/stream", response_class=EventSourceResponse, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "`event: metrics` per row (`id` is its step, `data` the row as JSON); "
                         "`event: end` with the final status, then the stream closes."},
    404: {"description": "Unknown job"}})
async def stream_metrics(job_id: JobId, manager: ManagerDep, settings: SettingsDep, since_step: SinceStep = 0,
                         last_event_id: Annotated[int | None, Header(ge=0)] = None) -> EventSourceResponse:
    """The metrics rows live, as server-sent events; a reconnect with Last-Event-ID resumes."""
    await run_in_threadpool(manager.get, job_id)  # 404 before the stream starts
    start = max(since_step, last_event_id or 0)
    return EventSourceResponse(metrics_events(manager, job_id, start, settings.sse_poll_s), ping=15)
