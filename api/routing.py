"""`StrictQueryRoute`: the route class of every API router, refusing unknown query parameters.

A misspelt parameter (`?since=100` for `since_step`) must be a 422, not silently ignored
(which would return every row); so must one given twice that takes one value (FastAPI would
keep the last and drop the other). The check runs in the route's handler, before FastAPI
solves the route's dependencies (as an app-wide dependency it cost a good part of a metrics
poll). Since the token check is one of those dependencies, a route that needs the token checks
it first here, when it is about to refuse a parameter: without a valid token every protected
route answers 401, so an unauthenticated client cannot probe parameter names.
"""

from __future__ import annotations

from types import UnionType
from typing import Any, Callable, Coroutine, Union, get_args, get_origin

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from api.deps import UNAUTHORIZED, request_authorized, require_token


def _query_params(dependant: Dependant) -> dict[str, bool]:
    """The query parameters a route (with its sub-dependencies) takes: name -> repeatable."""
    params = {field.alias: _is_list(field.field_info.annotation) for field in dependant.query_params}
    for sub in dependant.dependencies:
        params.update(_query_params(sub))
    return params


def _is_list(annotation: Any) -> bool:
    """Whether a parameter's type is a list (`list[X] | None` included)."""
    if get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return any(_is_list(arg) for arg in get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else False


def _needs_token(dependant: Dependant) -> bool:
    """Whether the route (or one of its sub-dependencies) checks the bearer token."""
    return any(sub.call is require_token or _needs_token(sub) for sub in dependant.dependencies)


async def refuse_unexpected_query_params(request: Request, known: dict[str, bool], protected: bool) -> None:
    """Raise a 422 (RequestValidationError) for a query parameter not in `known` (the route's,
    from `_query_params`), or one given more than once that takes one value; a 401 instead when
    the route is `protected` and the request lacks the token."""
    for name in sorted(set(request.query_params)):
        if name not in known:
            # The route's parameters are not listed: this runs before the token check, and the
            # schema that lists them is behind the token.
            msg = "unknown query parameter (misspelt?); /docs lists this route's parameters"
        elif not known[name] and len(request.query_params.getlist(name)) > 1:
            msg = "given more than once; this parameter takes one value"
        else:
            continue
        if protected and not await request_authorized(request):
            raise UNAUTHORIZED
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name), "msg": msg}])


class StrictQueryRoute(APIRoute):
    """An APIRoute whose handler first refuses unexpected query parameters (see the module)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, behind the query parameter check."""
        handler = super().get_route_handler()
        known: dict[str, bool] | None = None  # this handler's route's parameters, on first use
        protected = False

        async def checked(request: Request) -> Response:
            nonlocal known, protected
            if request.scope.get("query_string"):
                dependant = getattr(request.scope.get("route"), "dependant", None)
                if known is None and dependant is not None:
                    known, protected = _query_params(dependant), _needs_token(dependant)
                if known is not None:
                    await refuse_unexpected_query_params(request, known, protected)
            return await handler(request)

        return checked
