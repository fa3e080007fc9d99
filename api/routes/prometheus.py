"""GET /metrics: the service in Prometheus' text format, and the request-latency middleware.

Job figures are read from the job store at scrape time, so they are right after a restart and
cost nothing between scrapes. Per-job series cover RUNNING jobs (a finished job's series end,
as Prometheus expects of things that go away); `a2c_jobs` and `a2c_updates_total` cover all.
"""

from __future__ import annotations

import time
from typing import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Authenticated, StoreDep
from api.routing import StrictQueryRoute
from service.records import JobStatus
from service.store import JobStore

router = APIRouter(tags=["monitoring"], dependencies=[Authenticated], route_class=StrictQueryRoute)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def request_latency_histogram() -> Histogram:
    """The histogram the middleware fills (one per app, in no global registry)."""
    return Histogram("a2c_http_request_duration_seconds",
                     "Time from a request's arrival to its response headers, by route template.",
                     ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=None)


class RequestLatency:
    """ASGI middleware: observe each HTTP request's time to response headers.

    Time to headers, not to the last byte, so an hours-long metrics stream or a slow download
    does not read as a slow handler. Requests are labelled by route template (`/jobs/{job_id}`),
    never by raw path, so the series stay few; unmatched paths share `route="unmatched"`.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; time it when its response starts."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                self.histogram.labels(scope["method"], getattr(route, "path", "unmatched"),
                                      str(message["status"])).observe(time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, timed_send)


class JobsCollector:
    """Job figures from the store, computed on each collect."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        """Nothing to check up front: the families are built on collect."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Jobs by state, updates in total, and steps, steps/s, updates and return per running job."""
        jobs = GaugeMetricFamily("a2c_jobs", "Jobs in each state.", labels=["status"])
        counts = self.store.status_counts()
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        updates = self.store.update_counts()
        yield CounterMetricFamily("a2c_updates", "A2C updates done, over all jobs.",
                                  value=sum(updates.values()))
        labels = ["job_id", "env"]
        steps = CounterMetricFamily("a2c_job_env_steps", "Env steps trained by a running job.", labels=labels)
        sps = GaugeMetricFamily("a2c_job_env_steps_per_second",
                                "Env steps per second of a running job's last update.", labels=labels)
        job_updates = CounterMetricFamily("a2c_job_updates", "Updates done by a running job.", labels=labels)
        ret = GaugeMetricFamily("a2c_job_episode_return_mean",
                                "Mean return of a running job's last 20 finished episodes.", labels=labels)
        for job in self.store.list_jobs([JobStatus.RUNNING], limit=10_000):
            key = [job.id, job.env]
            steps.add_metric(key, job.step)
            job_updates.add_metric(key, updates.get(job.id, 0))
            row = self.store.latest_metrics(job.id) or {}
            if row.get("env_steps_per_s") is not None:
                sps.add_metric(key, row["env_steps_per_s"])
            if row.get("episode_return_mean") is not None:
                ret.add_metric(key, row["episode_return_mean"])
        yield from (steps, sps, job_updates, ret)


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Prometheus text exposition format."}})
def prometheus_metrics(request: Request, store: StoreDep) -> Response:
    """The service's metrics for Prometheus: jobs by state, updates, per running job env steps,
    steps/s, updates and mean return, and the request latency histogram."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(store))
    registry.register(request.app.state.request_latency)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
