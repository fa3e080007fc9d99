"""`create_app`: the FastAPI app, with a lifespan that joins Ray and runs the job manager."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import Settings, get_settings
from api.deps import Authenticated
from api.errors import install_error_handlers
from api.routes import checkpoints, dashboard, envs, health, jobs, metrics, plots, prometheus, sweeps, videos
from api.routing import StrictQueryRoute

log = logging.getLogger(__name__)


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse early on Content-Length; count the bytes of a chunked body as they come."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await JSONResponse({"detail": "invalid Content-Length"}, status_code=400)(scope, receive, send)
        if declared is not None and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited() -> Message:
            """`receive`, counting body bytes."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read, so the app's handler turns it into a 413.
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


docs = APIRouter(include_in_schema=False, dependencies=[Authenticated], route_class=StrictQueryRoute)


@docs.get("/openapi.json")
def openapi_schema(request: Request) -> JSONResponse:
    """The OpenAPI schema (behind the token, like every route but /healthz)."""
    return JSONResponse(request.app.openapi())


DOCS_STATIC_DIR = Path(__file__).resolve().parent / "docs_static"
"""Swagger UI's and ReDoc's files, vendored (see its README.md): /docs needs no CDN."""
DOCS_STATIC = "/docs-static"


@docs.get("/docs")
def swagger_ui() -> HTMLResponse:
    """Swagger UI over /openapi.json, from the package's own copy of its files."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title="a2c-service API",
                               swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png")


@docs.get("/redoc")
def redoc() -> HTMLResponse:
    """ReDoc over /openapi.json, from the package's own copy of its files (no web fonts)."""
    return get_redoc_html(openapi_url="/openapi.json", title="a2c-service API",
                          redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
                          redoc_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png", with_google_fonts=False)


def lower_request_priority(nice: int) -> None:
    """Raise the nice value of this thread (the event loop's) and so of the threads it starts
    from now on, which serve requests.

    The threads that started the embedded Ray and the job scheduler ran before this, so Ray's
    processes, the jobs' threads and their driver processes keep the normal priority. Linux
    sets priorities per thread; elsewhere this does nothing.
    """
    if nice and sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)
        log.info("a2c-service: request handling runs at nice +%d (A2C_REQUEST_NICE)", nice)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Join Ray (embedded by default), open the store, recover unfinished jobs; undo on exit."""
    from service import storage
    from service.cluster import cluster_cpus, connect, disconnect, driver_address, embedded
    from service.jobs.locations import JobLocations
    from service.jobs.manager import JobLimits, JobManager
    from service.jobs.queries import JobQueries
    from service.serving import PolicyServer
    from service.store import JobStore
    from service.sweeps.manager import SweepManager

    settings: Settings = app.state.settings
    if settings.storage:  # an unusable URI stops the server now, not a job at its first checkpoint
        storage.check_available(settings.storage)
    # ray.init installs a SIGTERM handler that exits at once; keep uvicorn's graceful one, so
    # running jobs get to write a final checkpoint on shutdown.
    sigterm = signal.getsignal(signal.SIGTERM)
    import ray
    started_ray = not ray.is_initialized()
    where = connect(settings.address, num_cpus=settings.ray_num_cpus)
    started_ray = started_ray and embedded()
    if threading.current_thread() is threading.main_thread() and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    log.info("a2c-service: Ray: %s; data dir %s; checkpoints in %s", where, settings.data_dir.resolve(),
             settings.storage or settings.data_dir.resolve() / "jobs")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.data_dir / "jobs.sqlite3")
    locations = JobLocations(settings.data_dir, settings.storage)
    manager = JobManager(store, locations, JobLimits(
        max_total_steps=settings.max_total_steps, max_workers_per_job=settings.max_workers_per_job,
        max_concurrent_jobs=settings.max_concurrent_jobs, resource_timeout_s=settings.resource_timeout_s,
        max_recoveries=settings.max_recoveries), ray_address=driver_address(settings.address),
        warm_jobs=embedded() if settings.warm_jobs is None else settings.warm_jobs)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    sweep_manager = SweepManager(store, manager, settings.data_dir / "sweeps", api_url(settings), token)
    sweep_manager.recover()  # first: its trial jobs are stopped, not resumed without their sweep

    def start() -> None:
        manager.start()
        sweep_manager.start()

    # Not asyncio.to_thread: the default executor's threads serve requests, and one made now
    # would keep the normal priority. The threads manager.start and sweep_manager.start make
    # (scheduler, sweep launcher) must keep it.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="job-manager-start") as pool:
        await asyncio.get_running_loop().run_in_executor(pool, start)
    lower_request_priority(settings.request_nice)
    app.state.store, app.state.manager, app.state.sweeps = store, manager, sweep_manager
    app.state.queries = JobQueries(store, locations, cluster_cpus)
    app.state.policies = PolicyServer(settings.act_cache_mb << 20, settings.act_max_batch)
    try:
        yield
    finally:
        app.state.manager = app.state.queries = app.state.sweeps = app.state.policies = None
        await asyncio.to_thread(sweep_manager.shutdown, settings.shutdown_grace_s)
        await asyncio.to_thread(manager.shutdown, settings.shutdown_grace_s)
        app.state.store = None
        store.close()
        if started_ray:
            # Its daemons die with this thread (the parent-death signal is per thread). A server
            # run in a thread (`a2c sweep`) must leave Ray first, or this process's Ray client
            # waits 60 s for the dead GCS at exit and then ends it with status 1.
            disconnect()


def api_url(settings: Settings) -> str:
    """Where processes on this machine reach the API (a sweep's trials): loopback when the
    server listens on every interface."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


_MESSAGE = {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}}


def document_error_responses(app: FastAPI) -> None:
    """Add the responses that middleware and auth give to the OpenAPI schema of every route.

    They come from outside the handlers (the bearer check, the body size limit), so FastAPI
    cannot see them; clients and fuzzers should still find every status code documented.
    """
    build = app.openapi

    def openapi() -> dict:
        schema = build()  # FastAPI caches it; the additions below are idempotent
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                if op.get("security"):
                    responses.setdefault("401", {"description": "Missing or wrong bearer token",
                                                 "content": _MESSAGE})
                if "requestBody" in op:
                    responses.setdefault("400", {"description": "Malformed Content-Length", "content": _MESSAGE})
                    responses.setdefault("413", {"description": "Request body over A2C_MAX_BODY_BYTES",
                                                 "content": _MESSAGE})
        return schema

    app.openapi = openapi


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app. Without `settings`, they come from the environment (`A2C_*`)."""
    app = FastAPI(title="a2c-service", version="0.1.0", lifespan=lifespan,
                  description="A2C training jobs on Ray: submit, watch metrics, download checkpoints.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings or get_settings()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=app.state.settings.max_body_bytes)
    app.state.request_latency = prometheus.request_latency_histogram()
    app.add_middleware(prometheus.RequestLatency, histogram=app.state.request_latency)
    for router in (health.router, jobs.router, envs.router, metrics.router, checkpoints.router, videos.router,
                   plots.router, prometheus.router, dashboard.router, sweeps.router, docs):
        app.include_router(router)
    app.mount("/static", dashboard.static_files, name="static")
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_STATIC_DIR), name="docs-static")
    document_error_responses(app)
    return app
