"""GET /envs/{env}/defaults: the job spec an env would run with, before submitting one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from api.deps import Authenticated
from api.routing import StrictQueryRoute
from service.run.spec import InvalidSpec, build_spec

router = APIRouter(prefix="/envs", tags=["envs"], dependencies=[Authenticated], route_class=StrictQueryRoute)


class EnvDefaults(BaseModel):
    """The effective spec of `{"env": env}`: every field's value, the tuned ones listed."""

    env: str
    spec: dict[str, Any] = Field(description=(
        "The job spec POST /jobs would run for a body of only `env`: the tuned table's values "
        "for this env where it has them, the schema's defaults elsewhere. Fields you send override them."))
    tuned: list[str] = Field(description="Dotted paths of the values taken from the tuned table, e.g. "
                                         "`a2c.learning_rate`; `--no-tuned` / `use_tuned: false` drops them.")


@router.get("/{env:path}/defaults", response_model=EnvDefaults,
            responses={422: {"description": "Not a registered env id (`loc` is the path parameter)"}})
def env_defaults(env: Annotated[str, Path(description="A registered gymnasium env id, e.g. `CartPole-v1` "
                                                      "or `ALE/Pong-v5`.", max_length=200)]) -> EnvDefaults:
    """The spec a job on this env runs with when it sets nothing else, with the tuned values marked."""
    try:
        spec = build_spec({"env": env})
    except InvalidSpec as exc:
        raise HTTPException(422, [{"type": "InvalidSpec", "loc": ["path", "env"], "msg": exc.message}]) from None
    return EnvDefaults(env=env, spec=spec.model_dump(mode="json"), tuned=list(spec.tuned))
