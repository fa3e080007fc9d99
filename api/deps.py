"""Injected dependencies of the routes: settings, the job store and manager, the policy server,
token auth.

They are `async def` because they do no I/O: FastAPI runs a plain `def` dependency in its
thread pool, a thread round trip per dependency per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.config import Settings
from api.errors import ServiceNotReady
from service.jobs.manager import JobManager
from service.jobs.queries import JobQueries
from service.serving import PolicyServer
from service.store import JobStore
from service.sweeps.manager import SweepManager


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    """The job store opened by the app's lifespan."""
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise ServiceNotReady("the job store is not open")
    return store


async def get_manager(request: Request) -> JobManager:
    """The job manager started by the app's lifespan."""
    manager = getattr(request.app.state, "manager", None)
    if manager is None:
        raise ServiceNotReady("the job manager is not running")
    return manager


async def get_queries(request: Request) -> JobQueries:
    """The job queries opened by the app's lifespan."""
    queries = getattr(request.app.state, "queries", None)
    if queries is None:
        raise ServiceNotReady("the job service is not running")
    return queries


async def get_sweeps(request: Request) -> SweepManager:
    """The sweep manager started by the app's lifespan."""
    sweeps = getattr(request.app.state, "sweeps", None)
    if sweeps is None:
        raise ServiceNotReady("the sweep service is not running")
    return sweeps


async def get_policies(request: Request) -> PolicyServer:
    """The policy server (loaded policies' cache) made by the app's lifespan."""
    policies = getattr(request.app.state, "policies", None)
    if policies is None:
        raise ServiceNotReady("the policy server is not running")
    return policies


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ManagerDep = Annotated[JobManager, Depends(get_manager)]
QueriesDep = Annotated[JobQueries, Depends(get_queries)]
SweepsDep = Annotated[SweepManager, Depends(get_sweeps)]
PoliciesDep = Annotated[PolicyServer, Depends(get_policies)]

_bearer = HTTPBearer(auto_error=False, description="The server's A2C_API_TOKEN, when it has one.")


def token_matches(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """Whether the request's bearer credentials are the server's token (True when it has none)."""
    if settings.api_token is None:
        return True
    given = credentials.credentials.encode() if credentials else b""
    return hmac.compare_digest(given, settings.api_token.get_secret_value().encode())


UNAUTHORIZED = HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                             headers={"WWW-Authenticate": "Bearer"})


async def require_token(settings: SettingsDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the request carries `Authorization: Bearer <A2C_API_TOKEN>` (when a token is set)."""
    if not token_matches(settings, credentials):
        raise UNAUTHORIZED


async def request_authorized(request: Request) -> bool:
    """Whether a request may see a protected route (what `require_token` checks), for checks
    that run before the route's dependencies do (see api/routing.py)."""
    return token_matches(request.app.state.settings, await _bearer(request))


Authenticated = Depends(require_token)
"""Put in a router's `dependencies=[...]` to protect all its routes."""
