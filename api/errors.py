"""Domain exceptions to HTTP responses, in one place.

422 bodies have FastAPI's shape, `{"detail": [{"type", "loc", "msg"}]}`, whether pydantic or
the job service found the problem, so clients read the offending field from `loc` either way.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from learner.checkpoint import CheckpointRejected
from service.jobs import CheckpointNotFound, IdempotencyKeyReused, InvalidPageToken, JobFinished, JobNotFound
from service.spec import InvalidSpec
from service.store import StoreError


class ServiceNotReady(RuntimeError):
    """The job service has not started (or has shut down)."""


STATUS_CODES: dict[type[Exception], int] = {
    JobNotFound: 404,
    CheckpointNotFound: 404,
    JobFinished: 409,
    InvalidSpec: 422,
    IdempotencyKeyReused: 422,
    InvalidPageToken: 422,
    CheckpointRejected: 422,
    ServiceNotReady: 503,
    StoreError: 503,
}


def _location(exc: Exception) -> list[str] | None:
    """Where a 422 points: the body field, header or query parameter at fault."""
    if isinstance(exc, InvalidSpec):
        # "spec" is build_spec's name for a check across fields; its message names them.
        return ["body", *exc.field.split(".")] if exc.field not in ("body", "spec") else ["body"]
    if isinstance(exc, IdempotencyKeyReused):
        return ["header", "Idempotency-Key"]
    if isinstance(exc, InvalidPageToken):
        return ["query", "page_token"]
    if isinstance(exc, CheckpointRejected):
        return ["body", "resume_from", "checkpoint"]
    return None


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    """The response for a domain exception: its status code and message."""
    status = next(STATUS_CODES[t] for t in type(exc).__mro__ if t in STATUS_CODES)
    loc = _location(exc)
    if loc is not None:
        msg = exc.message if isinstance(exc, InvalidSpec) else str(exc)
        content = {"detail": [{"type": type(exc).__name__, "loc": loc, "msg": msg}]}
    else:
        content = {"detail": str(exc)}
    return JSONResponse(content, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Register `domain_error` for every exception in STATUS_CODES."""
    for exc_type in STATUS_CODES:
        app.add_exception_handler(exc_type, domain_error)
