"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis).

Every operation gets schema-valid and schema-violating requests (wrong types, missing and
extra fields, odd headers, no token); no response may be a 5xx, and every response must match
its documented status codes, headers and schema. The app, its schema, validation, store and
job manager are the real ones, in-process over ASGI; only the cluster is stubbed (the manager
is never started and reports 4 CPUs), so the jobs the fuzzer submits stay PENDING and no
training runs; nor do the sweeps it submits (their manager is never started).
"""

from __future__ import annotations

import contextlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks

from api.app import create_app
from api.config import Settings
from service.jobs.locations import JobLocations
from service.jobs.manager import JobLimits, JobManager
from service.jobs.queries import JobQueries
from service.serving import PolicyServer
from service.store import JobStore
from service.sweeps.manager import SweepManager

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api_schema(tmp_path):
    """The app's OpenAPI schema, loaded over ASGI from /openapi.json (behind the token)."""
    app = create_app(Settings(data_dir=tmp_path, max_body_bytes=16 * 1024, api_token=TOKEN))

    @contextlib.asynccontextmanager
    async def without_ray(app):
        # The real lifespan would join Ray and start scheduling; this one opens the same store
        # and a manager that only validates and queues.
        store = JobStore(tmp_path / "jobs.sqlite3")
        app.state.store = store
        app.state.manager = JobManager(store, JobLocations(tmp_path), JobLimits(max_total_steps=1_000_000),
                                       cluster_cpus=lambda: 4.0)
        app.state.queries = JobQueries(store, app.state.manager.locations, app.state.manager.cluster_cpus)
        # Sweeps are validated and recorded; never started (no launcher thread: no Ray Tune run).
        app.state.sweeps = SweepManager(store, app.state.manager, tmp_path / "sweeps", "http://127.0.0.1:9")
        app.state.policies = PolicyServer(64 << 20, 64)  # no job has a checkpoint: /act answers 404
        try:
            yield
        finally:
            store.close()

    app.router.lifespan_context = without_ray
    # The token through schemathesis' own auth, so that its cases without it stay without it.
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}}})
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_the_schema_allows_or_forbids_gets_a_5xx(case):
    case.call_and_validate(excluded_checks=[
        # Valid by the schema yet refused, rightly: the schema cannot say which env ids are
        # registered, that page tokens come from the server, or cross-field rules such as
        # steps_per_batch being a multiple of workers x envs_per_worker.
        openapi_checks.positive_data_acceptance,
        # Starlette's 405 lists the methods of one route per path in Allow (POST /jobs and
        # GET /jobs are two routes), so OPTIONS /jobs says "POST"; a 4xx either way.
        openapi_checks.allow_header_conformance,
    ])
