"""Liveness (/healthz, open to all) and readiness (/readyz: Ray reachable, store writable)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import Authenticated, ManagerDep, QueriesDep
from api.routing import StrictQueryRoute
from api.schemas import Health

router = APIRouter(tags=["health"], route_class=StrictQueryRoute)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers. Needs no token."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, dependencies=[Authenticated],
            responses={503: {"model": Health, "description": "A check failed; `checks` says which"}})
def readyz(queries: QueriesDep, manager: ManagerDep, response: Response) -> Health:
    """Ready to run jobs: the Ray cluster answers and the job store takes writes. `warm` says
    whether a spare driver with warm actors waits for the next job (informational)."""
    checks = {**queries.readiness(), "warm": f"ok: {manager.spare_state()}"}
    ok = all(v.startswith("ok") for v in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "unavailable", checks=checks)
