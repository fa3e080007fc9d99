"""`SweepSpec`: a hyperparameter sweep as submitted by `POST /sweeps` or `a2c sweep --config`:
a base job spec, a search space over its fields, and how Ray Tune searches it.

`build_sweep` validates one, naming the path at fault (`space.a2c.learning_rate`,
`base.total_steps`, `num_samples`); `trial_spec` is the job spec of one trial; `tune_space`
turns the space into Ray Tune's search space. See docs/sweeps.md.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any, Callable, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from service.records import METRIC_KEYS
from service.run.spec import InvalidSpec, JobSpec, check_json_values

Number = Union[int, float]

METRICS = tuple(k for k in METRIC_KEYS if k not in ("step", "weights_version", "policy_lag"))
"""Metrics row keys a sweep may rank its trials by."""

NOT_SEARCHABLE = {
    "env": "a sweep trains one env; run one sweep per env",
    "env_kwargs": "env_kwargs cannot be searched; set them in base",
    "total_steps": "every trial gets base.total_steps, the budget ASHA divides into rungs",
    "use_tuned": "set use_tuned in base",
    "tuned": "set by the service",
}
"""Job spec fields a space may not name, with the reason."""


class Param(BaseModel):
    """One dimension of the search space: exactly one of `uniform`, `loguniform`, `choice`.

    A range on an integer field samples integers (both bounds included); on a float field,
    floats. `choice` takes any values the field accepts (e.g. lists for `policy.hidden_sizes`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    uniform: tuple[Number, Number] | None = Field(None, examples=[[0.0, 0.05]])
    """[low, high], sampled uniformly."""
    loguniform: tuple[Number, Number] | None = Field(None, examples=[[1e-4, 1e-2]])
    """[low, high], both above 0, sampled uniformly in log space."""
    choice: list[JsonValue] | None = Field(None, min_length=1, max_length=100, examples=[[256, 512, 1024]])
    """The values to choose from."""

    @model_validator(mode="after")
    def _one_kind(self) -> "Param":
        given = [k for k in ("uniform", "loguniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform: [low, high], loguniform: [low, high], "
                             f"choice: [values...] (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        """uniform, loguniform or choice."""
        return next(k for k in ("uniform", "loguniform", "choice") if getattr(self, k) is not None)


class AshaConfig(BaseModel):
    """ASHA's settings (Ray Tune's ASHAScheduler), in env steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace_steps: int | None = Field(None, ge=1)
    """Steps every trial trains before it can be stopped (the first rung); default
    base.total_steps / reduction_factor^2."""
    reduction_factor: int = Field(4, ge=2, le=16)
    """At each rung, only the best 1/reduction_factor of the trials go on."""


class SweepSpec(BaseModel):
    """A sweep: trials of the base job spec with values from `space`, searched by Ray Tune."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: dict[str, Any] = Field(examples=[{"env": "CartPole-v1", "total_steps": 100_000}])
    """The job spec every trial starts from (the body of POST /jobs, without resume_from)."""
    space: dict[str, Param] = Field(min_length=1, max_length=32, examples=[{
        "a2c.learning_rate": {"loguniform": [1e-4, 3e-3]}, "a2c.entropy_coef": {"uniform": [0.0, 0.02]}}])
    """Dotted job spec field path -> how to sample it."""
    num_samples: int = Field(8, ge=1, le=1000)
    """How many trials (jobs) to run."""
    max_concurrent_trials: int = Field(2, ge=1, le=64)
    """Trials running at once at most (the server may allow fewer: see docs/sweeps.md)."""
    metric: str = "eval_return_mean"
    """The metrics row key trials are ranked by (it needs evaluation rows: base.eval_every > 0)."""
    mode: Literal["max", "min"] = "max"
    """Whether a higher or a lower metric is better."""
    scheduler: Literal["asha", "none"] = "asha"
    """asha: stop the trials that fall behind at each rung; none: every trial runs to its end."""
    asha: AshaConfig = Field(default_factory=AshaConfig)
    search: Literal["random", "optuna"] = "random"
    """random: Tune's random search; optuna: Optuna's TPE through Tune's OptunaSearch (the
    `tune` extra: pip install 'a2c-service[tune]')."""
    seed: int | None = Field(None, ge=0, lt=2**31)
    """Seeds the search algorithm's sampling (the trials' own seed is base.seed or a space entry)."""

    def stored(self) -> dict[str, Any]:
        """The sweep as JSON, each space entry with its one kind only (as written)."""
        data = self.model_dump(mode="json")
        data["space"] = {path: {p.kind: data["space"][path][p.kind]} for path, p in self.space.items()}
        return data

    @property
    def grace_steps(self) -> int:
        """ASHA's first rung, in env steps."""
        total = int(self.base.get("total_steps", JobSpec.model_fields["total_steps"].default))
        return self.asha.grace_steps or max(1, total // self.asha.reduction_factor ** 2)


def _field(path: str):
    """The pydantic field a dotted path names, or None."""
    model: Any = JobSpec
    field = None
    for name in path.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or name not in model.model_fields:
            return None
        field = model.model_fields[name]
        model = field.annotation
    return field


def _takes(annotation: Any, kind: type) -> bool:
    """Whether a field annotation is `kind` or an optional `kind`."""
    if annotation is kind:
        return True
    return get_origin(annotation) in (Union, type(int | None)) and kind in get_args(annotation)


def is_int_field(path: str) -> bool:
    """Whether the field at `path` takes integers (ranges over it sample integers)."""
    field = _field(path)
    return field is not None and _takes(field.annotation, int) and not _takes(field.annotation, float)


def trial_spec(base: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The job spec of one trial: `base` with each dotted path of `config` set to its value."""
    spec = dict(base)
    for path, value in config.items():
        node = spec
        *parents, leaf = path.split(".")
        for name in parents:
            child = node.get(name)
            node[name] = dict(child) if isinstance(child, dict) else {}
            node = node[name]
        node[leaf] = value
    return spec


def _first_error(exc: ValidationError) -> InvalidSpec:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if loc[:1] == ["space"] and len(loc) >= 2:  # the path is one key: keep its dots, drop pydantic's tags
        loc = ["space", loc[1], *[p for p in loc[2:] if p in ("uniform", "loguniform", "choice")]]
    return InvalidSpec(".".join(loc) or "body", err["msg"].removeprefix("Value error, "))


def build_sweep(raw: Any, check_job: Callable[[dict[str, Any]], JobSpec]) -> SweepSpec:
    """Validate a raw sweep; raises InvalidSpec naming the path at fault.

    `check_job` validates one job spec as POST /jobs would (the server's limits included) and
    raises InvalidSpec naming its field. The base is checked, then every bound and choice of
    the space in turn (the other fields at their base values), so that a value of the wrong
    type, or one the server refuses, is named by its path before any trial runs.
    """
    if not isinstance(raw, dict):
        raise InvalidSpec("body", "must be a JSON object: {base, space, num_samples, ...}")
    check_json_values(raw, "body")
    try:  # JSON types must match, as for POST /jobs: `false` is not a seed, "2" not a count
        sweep = SweepSpec.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as exc:
        raise _first_error(exc) from None
    if "resume_from" in sweep.base:
        raise InvalidSpec("base.resume_from", "a sweep's trials start from scratch; remove resume_from")
    try:
        base = check_job(sweep.base)
    except InvalidSpec as exc:
        raise InvalidSpec(f"base.{exc.field}", exc.message) from None
    if sweep.metric not in METRICS:
        raise InvalidSpec("metric", f"{sweep.metric!r} is not a metrics row key; use one of {', '.join(METRICS)}")
    if sweep.metric == "eval_return_mean" and base.eval_every == 0:
        raise InvalidSpec("base.eval_every", "is 0, so trials evaluate only at their end and ASHA has "
                          "nothing to compare at its rungs: set it above 0, or use metric: episode_return_mean")
    if sweep.scheduler == "asha" and sweep.grace_steps >= base.total_steps:
        raise InvalidSpec("asha.grace_steps", f"{sweep.grace_steps} leaves no rung before the end "
                          f"(base.total_steps is {base.total_steps}): use fewer steps")
    if sweep.search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise InvalidSpec("search", "optuna is not installed on the server: pip install 'a2c-service[tune]', "
                          "or use search: random")
    for path, param in sweep.space.items():
        _check_param(sweep, path, param, check_job)
    return sweep


def _check_param(sweep: SweepSpec, path: str, param: Param, check_job: Callable[[dict[str, Any]], JobSpec]) -> None:
    where = f"space.{path}"
    top = path.split(".")[0]
    if top in NOT_SEARCHABLE:
        raise InvalidSpec(where, NOT_SEARCHABLE[top])
    field = _field(path)
    if field is None or isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        raise InvalidSpec(where, f"{path!r} is not a job spec field; name one like a2c.learning_rate, "
                          "a2c.entropy_coef, a2c.steps_per_batch or envs_per_worker")
    values: list[Any]
    if param.kind == "choice":
        values = list(param.choice)
    else:
        low, high = getattr(param, param.kind)
        numeric = _takes(field.annotation, int) or _takes(field.annotation, float)
        if not numeric or _takes(field.annotation, bool):
            raise InvalidSpec(f"{where}.{param.kind}", f"{path} is not a number; use choice: [values...]")
        if is_int_field(path) and not all(float(v).is_integer() for v in (low, high)):
            raise InvalidSpec(f"{where}.{param.kind}", f"{path} takes integers; [{low}, {high}] are not")
        if not low < high:
            raise InvalidSpec(f"{where}.{param.kind}", f"[{low}, {high}] is an empty range: low must be below high")
        if param.kind == "loguniform" and low <= 0:
            raise InvalidSpec(f"{where}.{param.kind}", f"low is {low}: a log-uniform range must lie above 0")
        values = [int(low), int(high)] if is_int_field(path) else [float(low), float(high)]
    for value in values:
        try:
            check_job(trial_spec(sweep.base, {path: value}))
        except InvalidSpec as exc:
            at = "" if exc.field == path else f" (the job's {exc.field})"
            raise InvalidSpec(where, f"{value!r} is not valid here{at}: {exc.message}") from None


def tune_space(sweep: SweepSpec) -> dict[str, Any]:
    """Ray Tune's search space: a domain per path. A `choice` samples the index of its value,
    so any value (lists too) works with every search algorithm; `trial_config` maps it back."""
    from ray import tune

    space: dict[str, Any] = {}
    for path, param in sweep.space.items():
        if param.kind == "choice":
            space[path] = tune.choice(list(range(len(param.choice))))
            continue
        low, high = getattr(param, param.kind)
        if is_int_field(path):
            space[path] = (tune.randint if param.kind == "uniform" else tune.lograndint)(int(low), int(high) + 1)
        else:
            space[path] = (tune.uniform if param.kind == "uniform" else tune.loguniform)(float(low), float(high))
    return space


def trial_config(sweep: SweepSpec, sampled: dict[str, Any]) -> dict[str, Any]:
    """The values of one trial, by path, from what Tune sampled (choices become their value)."""
    config = {}
    for path, param in sweep.space.items():
        value = sampled[path]
        value = value.item() if hasattr(value, "item") else value  # numpy scalars
        config[path] = param.choice[int(value)] if param.kind == "choice" else value
    return config
