"""Domain exceptions to HTTP responses, in one place.

422 bodies have FastAPI's shape, `{"detail": [{"type", "loc", "msg"}]}`, whether pydantic or
the job service found the problem, so clients read the offending field from `loc` either way.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from learner.checkpoint import CheckpointRejected
from service.jobs.errors import (CheckpointNotFound, IdempotencyKeyReused, InvalidPageToken, JobFinished, JobNotFound,
                                 VideoNotFound)
from service.run.spec import InvalidSpec
from service.serving import InvalidObservations, UnservableCheckpoint
from service.store import StoreError
from service.sweeps.manager import SweepFinished, SweepNotFound


class ServiceNotReady(RuntimeError):
    """The job service has not started (or has shut down)."""


STATUS_CODES: dict[type[Exception], int] = {
    JobNotFound: 404,
    CheckpointNotFound: 404,
    VideoNotFound: 404,
    JobFinished: 409,
    SweepNotFound: 404,
    SweepFinished: 409,
    InvalidSpec: 422,
    IdempotencyKeyReused: 422,
    InvalidPageToken: 422,
    CheckpointRejected: 422,
    InvalidObservations: 422,
    UnservableCheckpoint: 422,
    ServiceNotReady: 503,
    StoreError: 503,
}


def _location(exc: Exception) -> list[str | int] | None:
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
    if isinstance(exc, InvalidObservations):
        return ["body", "observations", *exc.where]
    if isinstance(exc, UnservableCheckpoint):
        return ["path", "ckpt_id"]
    return None


class ErrorJSONResponse(JSONResponse):
    """JSON error bodies as ASCII: they may quote request text (e.g. a lone surrogate from a
    "\\ud800" escape) that UTF-8 cannot encode, and an error must never become a 500."""

    def render(self, content: Any) -> bytes:
        """Compact JSON with every non-ASCII character escaped."""
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


async def request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for bad parameters or malformed JSON, rendered safely."""
    return ErrorJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    """The response for a domain exception: its status code and message."""
    status = next(STATUS_CODES[t] for t in type(exc).__mro__ if t in STATUS_CODES)
    loc = _location(exc)
    if isinstance(exc, InvalidSpec):  # every problem found, each at its field
        content = {"detail": [{"type": type(exc).__name__, "loc": _location(InvalidSpec(field, msg)), "msg": msg}
                              for field, msg in exc.problems]}
    elif loc is not None:
        content = {"detail": [{"type": type(exc).__name__, "loc": loc, "msg": str(exc)}]}
    else:
        content = {"detail": str(exc)}
    return ErrorJSONResponse(content, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Register `domain_error` for every exception in STATUS_CODES, and the safe 422."""
    app.add_exception_handler(RequestValidationError, request_validation_error)
    for exc_type in STATUS_CODES:
        app.add_exception_handler(exc_type, domain_error)
