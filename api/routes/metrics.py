"""Routes of /jobs/{id}/metrics: rows by step, and the same rows live as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, AsyncIterator, Awaitable

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import Authenticated, QueriesDep, SettingsDep
from api.routing import StrictQueryRoute
from api.schemas import MetricsPublic
from service.jobs.queries import JobQueries
from service.records import JOB_ID_PATTERN
from service.store import JobRow

router = APIRouter(prefix="/jobs/{job_id}/metrics", tags=["metrics"], dependencies=[Authenticated],
                   route_class=StrictQueryRoute)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (12 hex digits).")]
MAX_STEP = 2**63 - 1
"""The largest step a row can have: SQLite's INTEGER is 64-bit signed."""
SinceStep = Annotated[int, Query(ge=0, le=MAX_STEP, description="Only rows with a larger step.")]
STREAM_BATCH = 500


@router.get("", response_model=MetricsPublic, responses={404: {"description": "Unknown job"}})
def get_metrics(job_id: JobId, queries: QueriesDep, since_step: SinceStep = 0,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> Response:
    """Metrics rows in step order; poll with `since_step=next_since_step` for newer ones.

    The body is a MetricsPublic built from the rows as stored (valid JSON, written by the
    store): dashboards poll this, and parsing, validating and re-encoding every row cost more
    than the rest of the request.
    """
    job, rows = queries.metrics_json(job_id, since_step, limit)
    body = (f'{{"job_id":{json.dumps(job.id)},"status":{json.dumps(job.status)},'
            f'"rows":[{",".join(row for _, row in rows)}],'
            f'"next_since_step":{rows[-1][0] if rows else since_step}}}')
    return Response(body, media_type="application/json")


class SharedReads:
    """The reads of metrics streams, shared by the streams that ask for the same rows in one tick.

    Streams poll on a common clock (ticks of `poll_s`), so every stream that follows a job's
    newest rows asks for the same ones at the same moment: one store read and one encoding
    serve them all, however many clients watch the job.
    """

    def __init__(self) -> None:
        self._reads: dict[tuple[str, int], tuple[int, asyncio.Task]] = {}
        self._tick = -1

    def read(self, queries: JobQueries, job_id: str, since: int, tick: int) -> Awaitable[tuple[JobRow, bytes, int, int]]:
        """(job, the rows after `since` as SSE events, their last step or `since`, row count)."""
        if tick != self._tick:  # forget the reads of earlier ticks
            self._tick = tick
            self._reads = {k: v for k, v in self._reads.items() if v[0] == tick}
        key = (job_id, since)
        hit = self._reads.get(key)
        if hit is None or hit[0] != tick:
            task = asyncio.ensure_future(_read_events(queries, job_id, since))
            # Retrieved here too, so a failed read whose streams all went away is not logged as lost.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            hit = self._reads[key] = (tick, task)
        return asyncio.shield(hit[1])  # one stream going away must not cancel the others' read


def metrics_event(step: int, row: str) -> str:
    """One stored metrics row as a server-sent event: `id` its step, `event: metrics`, `data` the
    row's JSON. The bytes are those of sse-starlette's `ServerSentEvent(row, event="metrics",
    id=str(step)).encode()`, built in one f-string: a stored row is one line of JSON (the store
    writes it with `json.dumps`, which escapes newlines), so there are no lines to split, and
    the generic encoder's per-row cost matters to streams catching up on hundreds of thousands
    of rows."""
    return f"id: {step}\r\nevent: metrics\r\ndata: {row}\r\n\r\n"


async def _read_events(queries: JobQueries, job_id: str, since: int) -> tuple[JobRow, bytes, int, int]:
    job, rows = await asyncio.to_thread(queries.metrics_json, job_id, since, STREAM_BATCH)
    events = "".join(metrics_event(step, row) for step, row in rows).encode()
    return job, events, rows[-1][0] if rows else since, len(rows)


async def get_stream_reads(request: Request) -> SharedReads:
    """The app's SharedReads (one per app: its streams share reads with each other only)."""
    reads = getattr(request.app.state, "stream_reads", None)
    if reads is None:
        reads = request.app.state.stream_reads = SharedReads()
    return reads


class StreamSlots:
    """How many metrics streams are open, against A2C_MAX_STREAMS (one per app; the event loop
    is the only thread that counts)."""

    def __init__(self) -> None:
        self.open = 0


async def get_stream_slots(request: Request) -> StreamSlots:
    """The app's StreamSlots."""
    slots = getattr(request.app.state, "stream_slots", None)
    if slots is None:
        slots = request.app.state.stream_slots = StreamSlots()
    return slots


async def metrics_events(queries: JobQueries, job_id: str, since_step: int, poll_s: float,
                         reads: SharedReads, slots: StreamSlots | None = None
                         ) -> AsyncIterator[ServerSentEvent | bytes]:
    """`metrics` events (id = step) as rows arrive, then one `end` event when the job ends.

    The events of one read go out as one chunk (a training job makes tens of rows a second).
    The stream counts in `slots` from its first event to its end, however it ends (a stream
    that never starts never counts, so nothing can leak a slot).
    """
    if slots is not None:
        slots.open += 1
    try:
        async for event in _metrics_events(queries, job_id, since_step, poll_s, reads):
            yield event
    finally:
        if slots is not None:
            slots.open -= 1


async def _metrics_events(queries: JobQueries, job_id: str, since_step: int, poll_s: float,
                          reads: SharedReads) -> AsyncIterator[ServerSentEvent | bytes]:
    last = since_step
    while True:
        tick = int(time.monotonic() // poll_s)
        job, events, last, n = await reads.read(queries, job_id, last, tick)
        if n:
            yield events
        if n == STREAM_BATCH:
            continue  # more may be waiting
        if job.finished:  # read before the rows: no row can follow
            yield ServerSentEvent(json.dumps({"status": job.status, "step": job.step}), event="end")
            return
        await asyncio.sleep((tick + 1) * poll_s - time.monotonic() + 1e-3)  # into the next tick


@router.get("/stream", response_class=EventSourceResponse, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "`event: metrics` per row (`id` is its step, `data` the row as JSON); "
                         "`event: end` with the final status, then the stream closes."},
    404: {"description": "Unknown job"}})
async def stream_metrics(job_id: JobId, queries: QueriesDep, settings: SettingsDep,
                         reads: Annotated[SharedReads, Depends(get_stream_reads)],
                         slots: Annotated[StreamSlots, Depends(get_stream_slots)], since_step: SinceStep = 0,
                         last_event_id: Annotated[int | None, Header(ge=0, le=MAX_STEP)] = None) -> EventSourceResponse:
    """The metrics rows live, as server-sent events; a reconnect with Last-Event-ID resumes.

    At most A2C_MAX_STREAMS are open at once; another gets 503 with Retry-After."""
    await run_in_threadpool(queries.get, job_id)  # 404 before the stream starts
    if slots.open >= settings.max_streams:
        raise HTTPException(503, f"{slots.open} metrics streams are open, the server's limit "
                            f"(A2C_MAX_STREAMS); retry later, or poll GET /jobs/{job_id}/metrics",
                            headers={"Retry-After": "5"})
    start = max(since_step, last_event_id or 0)
    return EventSourceResponse(metrics_events(queries, job_id, start, settings.sse_poll_s, reads, slots), ping=15)
