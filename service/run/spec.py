"""`JobSpec`: one training job as submitted by the CLI, a config file or `POST /jobs`, and its
checks against the env's spaces (`env_spaces`, without torch) and a checkpoint to resume from
(`job_spaces`)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from learner.config import A2CConfig, FrozenModel, PolicyConfig
from learner.spaces import SpacesSpec, policy_mismatch
from service.run.tuned import tuned_for

if TYPE_CHECKING:
    from learner.checkpoint import Checkpoint
# torch and gymnasium are imported where they are used, so that the CLI's parser (which reads
# JobSpec's fields) and `a2c serve`'s port check start in a fraction of a second.

JsonScalar = str | int | float | bool | None

MAX_POLICY_PARAMETERS = 20_000_000
"""The largest policy a job may ask for (weights and statistics, counted): 80 MB of float32
weights, three times that with Adam's moments, held by the learner and by every worker."""


class InvalidSpec(ValueError):
    """A job spec that cannot run; `field` names the offending field (dotted path). `more` holds
    the other problems found at the same time, as (field, message) pairs, so that a user sees
    them all at once."""

    def __init__(self, field: str, message: str, more: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.more = field, message, tuple(more)

    @property
    def problems(self) -> list[tuple[str, str]]:
        """Every (field, message), this one first."""
        return [(self.field, self.message), *self.more]


class JobSpec(FrozenModel):
    """What to train and how: env, budget, layout of workers, A2C and policy config."""

    env: str = Field(min_length=1, max_length=200, examples=["CartPole-v1"])
    """A gymnasium env id from the registry (module paths like `pkg:Env` are refused)."""
    env_kwargs: dict[str, JsonScalar] = Field(default_factory=dict)
    """Keyword arguments for `gymnasium.make`."""
    total_steps: int = Field(100_000, ge=1)
    """Env steps to train for (over all workers and envs)."""
    workers: int = Field(2, ge=1, le=1024)
    """Rollout worker actors (1 CPU each)."""
    envs_per_worker: int = Field(8, ge=1, le=4096)
    """Envs in each worker's vector env."""
    seed: int = Field(0, ge=0, lt=2**31)
    """Seeds the policy init, every env (by worker and env index; a batched env such as
    CartPole's shares one generator per worker) and the mini-batch order."""
    mode: Literal["sync", "async"] = "sync"
    """sync: exact A2C. async: workers collect the next rollout during the update (lag <= 1)."""
    eval_every: int = Field(10, ge=0)
    """Evaluate the deterministic policy every this many updates (0: only at the end)."""
    eval_episodes: int = Field(10, ge=1, le=1000)
    """Episodes per evaluation."""
    video_every: int = Field(5, ge=0, le=10_000)
    """Record one deterministic episode as an MP4 (`<run dir>/videos/`) at every this many
    evaluations, i.e. every eval_every x video_every updates (0: no videos; none either when
    eval_every is 0). Recorded off the training loop, which never waits for it."""
    checkpoint_every: int = Field(25, ge=1)
    """Write a checkpoint archive every this many updates, and always at the end."""
    max_nonfinite_updates: int = Field(3, ge=1)
    """Fail the job after this many updates in a row were skipped for NaN/inf."""
    max_learner_restarts: int = Field(3, ge=0, le=100)
    """Restart a lost learner (process or node died, or hung) from the last checkpoint at most
    this many times; then the job fails."""
    learner_cpus: int = Field(1, ge=1, le=64)
    """CPUs the learner reserves; on CPU it runs as many torch threads. In sync mode the workers
    wait while the learner updates, so a learner with the cores they leave idle updates faster
    (a convolutional policy's update is most of an Atari job's time)."""
    learner_device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: a GPU when the cluster has one, else CPU. cuda fails when the cluster has none."""
    cnn_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Precision of the convolutional torso in training (image observations; MLP policies are
    float32). bfloat16: the learner's forward and backward passes under torch's autocast (the
    weights, optimizer, heads and loss stay float32), and the rollout workers' acting, with a
    bfloat16 copy of the torso's weights, so that they act with the function the learner trains
    (the job's evaluations too). Evaluation of a checkpoint (`a2c evaluate`, serving, export)
    stays float32. auto: bfloat16 in each process whose device has bfloat16 units measured
    faster than float32 (a GPU with native bfloat16; an x86 CPU with AMX or AVX512-BF16), else
    float32; the learner's device line says which, and the placement event what the workers
    run (each resolves auto for its own node's CPU: where that differs from the learner's, they
    act with a slightly different function than the one trained). Elsewhere bfloat16 is
    slower: see docs/workloads.md."""
    use_tuned: bool = True
    """Fill `a2c`/`policy` fields the user left unset from the tuned table for this env."""
    tuned: tuple[str, ...] = ()
    """Set by the service: the fields taken from the tuned table, e.g. `a2c.learning_rate`."""
    a2c: A2CConfig = Field(default_factory=A2CConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w][\w .+=-]*$",
                             examples=["lr-sweep-1"])
    """A label of your choosing for the run (letters, digits, space and `._+=-`): listed with the
    job, and in its TensorBoard hparams."""
    tags: tuple[Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[\w.+=:-]+$")], ...] = Field(
        (), max_length=16, examples=[["baseline", "seed-sweep"]])
    """Labels to group runs by (listed with the job, logged as a TensorBoard hparam); at most 16, each one word."""
    tracking: tuple[Literal["wandb", "mlflow"], ...] = Field((), examples=[["wandb"], ["mlflow"]])
    """Experiment trackers to log the run to besides TensorBoard: its spec, metrics rows and
    checkpoint archives. Each is configured by its own environment variables (WANDB_PROJECT,
    WANDB_MODE...; MLFLOW_TRACKING_URI...) where the job is recorded, and needs its extra:
    `pip install 'a2c-service[wandb]'`. A tracker failing mid-run is an event; training goes on."""

    @field_validator("env")
    @classmethod
    def _registered(cls, env: str) -> str:
        from workers.env import UnknownEnvironment, check_env_id
        try:
            check_env_id(env)
        except UnknownEnvironment as exc:
            raise ValueError(str(exc)) from None
        return env

    @field_validator("tracking")
    @classmethod
    def _trackers_usable(cls, tracking: tuple[str, ...]) -> tuple[str, ...]:
        from service.run.tracking import tracker_problem
        problems = [problem for tracker in tracking if (problem := tracker_problem(tracker))]
        if problems:
            raise ValueError("; ".join(problems))
        return tuple(dict.fromkeys(tracking))

    @model_validator(mode="after")
    def _batch_divides(self) -> "JobSpec":
        per_step = self.workers * self.envs_per_worker
        spb = self.a2c.steps_per_batch
        if spb % per_step == 0:
            return self
        layout = f"workers x envs_per_worker ({self.workers} x {self.envs_per_worker} = {per_step})"
        tuned = (" (the value came from the tuned table; set it to override)"
                 if "a2c.steps_per_batch" in self.tuned else "")
        keep = ""
        if "envs_per_worker" in self.tuned and "workers" not in self.tuned:
            # The user set workers over a tuned layout, e.g. `--workers 2` on an Atari id, whose
            # tuned 16 envs are 1 worker x 16: the tuned env count, split over their workers.
            envs = tuned_for(self.env).get("workers", type(self).model_fields["workers"].default) * self.envs_per_worker
            if envs % self.workers == 0 and spb % envs == 0:
                keep = f", or envs_per_worker {envs // self.workers} to keep the tuned table's {envs} envs"
        if spb < per_step:
            raise InvalidSpec("a2c.steps_per_batch",
                f"{spb}{tuned} is less than {layout}, and every env takes at least one step per "
                f"batch: lower workers or envs_per_worker, or set steps_per_batch to a multiple "
                f"of {per_step}{keep}")
        lower = spb - spb % per_step
        raise InvalidSpec("a2c.steps_per_batch",
            f"{spb} must be a multiple of {layout}; use {lower} or {lower + per_step}{tuned}{keep}")

    @property
    def steps_per_env(self) -> int:
        """T: steps each env takes per rollout (steps_per_batch / (workers x envs_per_worker))."""
        return self.a2c.steps_per_batch // (self.workers * self.envs_per_worker)

    def value_at(self, path: str) -> Any:
        """The value of a dotted field path such as `a2c.learning_rate` or `workers`."""
        value: Any = self
        for name in path.split("."):
            value = getattr(value, name)
        return value

    @property
    def cpus_needed(self) -> int:
        """Logical CPUs the job's actors reserve: one per worker, and the learner's."""
        return self.workers + self.learner_cpus

    @property
    def num_updates(self) -> int:
        """Updates needed to reach total_steps (the last may overshoot by < one batch)."""
        return -(-self.total_steps // self.a2c.steps_per_batch)


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from the JSON escape "\ud800"
        return False
    return True


def check_json_values(value: Any, field: str = "spec") -> None:
    """Refuse what Python's JSON parser lets through but JSON cannot carry back out: NaN and
    Infinity, and strings with lone UTF-16 surrogates. Raises InvalidSpec naming the field."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpec(field, f"must be a finite number, not {value} (NaN and Infinity are not JSON)")
    if isinstance(value, str) and not _is_text(value):
        raise InvalidSpec(field, "must be valid Unicode text (it has a lone surrogate escape like \\ud800)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not _is_text(str(key)):
                raise InvalidSpec(field, "has a key that is not valid Unicode text (a lone surrogate escape)")
            check_json_values(item, str(key) if field == "spec" else f"{field}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json_values(item, f"{field}.{index}")


RENAMED_FIELDS = {"learner_precision": "cnn_precision"}
"""Job spec fields renamed since archives were written: old name -> new name."""


ARCHIVED_DEFAULTS = {"cnn_precision": "float32"}
"""Job spec fields added since archives were written, with the value archives that lack them
trained with (where today's default differs: cnn_precision's is auto since c621529)."""


def archived_spec(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's job spec with fields renamed since it was written under their new names,
    and fields added since at the value it trained with, so that a resumed job takes the
    archive's settings."""
    return {**ARCHIVED_DEFAULTS, **{RENAMED_FIELDS.get(k, k): v for k, v in config.items()}}


def build_spec(data: dict[str, Any], *, strict: bool = False) -> JobSpec:
    """Validate a raw job spec, filling `a2c`/`policy` fields the user did not set from the tuned
    table for its env (recorded in `tuned`). Raises InvalidSpec naming every bad field (the
    first in `field`, the others in `more`).

    `strict`: JSON types must match the schema (`"2"` or `true` is not a number), as for the
    HTTP API; the CLI's flags arrive as strings and are converted leniently.
    """
    check_json_values(data)
    data = dict(data)
    data.pop("tuned", None)
    env = data.get("env")
    table = tuned_for(env) if isinstance(env, str) and data.get("use_tuned", True) else {}
    filled: list[str] = []
    for section, values in table.items():
        if not isinstance(values, dict):  # a top-level field, e.g. envs_per_worker
            if section not in data:
                data[section] = values
                filled.append(section)
            continue
        given = data.get(section, {})
        if not isinstance(given, dict):  # null too: it must not turn into the tuned values
            raise InvalidSpec(section, f"must be an object of {section} settings")
        unset = {k: v for k, v in values.items() if k not in given}
        if unset:
            data[section] = {**unset, **given}
            filled += [f"{section}.{k}" for k in unset]
    if filled:
        data["tuned"] = tuple(sorted(filled))
    try:
        if strict:
            return JobSpec.model_validate_json(json.dumps(data), strict=True)
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, InvalidSpec):  # a cross-field check that knows its field
                problems += cause.problems
            else:
                problems.append((".".join(str(p) for p in err["loc"]) or "spec",
                                 err["msg"].removeprefix("Value error, ")))
        raise InvalidSpec(*problems[0], more=tuple(problems[1:])) from None


def env_spaces(spec: JobSpec) -> SpacesSpec:
    """The env's spaces, once the job's env and policy config are known to fit them; raises
    InvalidSpec naming the field that does not. Needs no torch (see `job_spaces` for the rest)."""
    from gymnasium.error import DependencyNotInstalled

    from workers.env import UnknownEnvironment, describe_spaces
    try:
        spaces = describe_spaces(spec.env, spec.env_kwargs)
    except UnknownEnvironment as exc:
        raise InvalidSpec("env", str(exc)) from None
    except DependencyNotInstalled as exc:  # a package the env needs, not its kwargs
        raise InvalidSpec("env", f"{spec.env} cannot be made: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - bad env_kwargs raise whatever the env raises
        raise InvalidSpec("env_kwargs", f"{spec.env} cannot be made with these kwargs: {exc}") from None
    mismatch = policy_mismatch(spaces, spec.policy)
    if mismatch is not None:
        raise InvalidSpec(mismatch[0], f"{spec.env}: {mismatch[1]}")
    if spec.cnn_precision == "bfloat16" and not spaces.is_image:
        raise InvalidSpec("cnn_precision", f"{spec.env}: {spec.cnn_precision} applies to the convolutional "
                          f"torso of image observations; these are {spaces.obs_dtype} {spaces.obs_shape}, "
                          "so the policy is an MLP: use float32")
    if spec.video_every and spec.eval_every:
        from workers.video import can_render
        if not can_render(spec.env):
            raise InvalidSpec("video_every", f"{spec.env} cannot render rgb_array frames for videos; "
                              "set video_every to 0")
    return spaces


def job_spaces(spec: JobSpec, resume: Checkpoint | None = None) -> SpacesSpec:
    """The env's spaces, once the job's env, policy (its size too) and resumed checkpoint (if
    any) are known to fit them; raises InvalidSpec naming the field that does not."""
    from learner.policy import shape_of  # imports torch: the only part of the checks that needs it
    spaces = env_spaces(spec)
    shapes = shape_of(spaces, spec.policy)
    size = sum(math.prod(shape) for shape in shapes.values())
    if size > MAX_POLICY_PARAMETERS:
        raise InvalidSpec("policy.hidden_sizes", f"{list(spec.policy.hidden_sizes)} gives {spec.env}'s policy "
                          f"{size:,} parameters, over the limit of {MAX_POLICY_PARAMETERS:,}: use fewer or "
                          f"narrower layers")
    if resume is not None:
        check_resume(spec, resume, spaces, shapes)
    return spaces


def _describe_actions(spaces: SpacesSpec) -> str:
    if spaces.action_type == "discrete":
        return f"{spaces.action_n} discrete actions"
    return f"continuous actions of shape {spaces.action_shape}"


def spaces_difference(env: SpacesSpec, checkpoint: SpacesSpec) -> str:
    """How an env's spaces differ from a checkpoint's, in words, e.g. `observations (6,) here,
    (4,) in the checkpoint; actions: 3 discrete actions here, 2 discrete actions in the checkpoint`."""
    parts = []
    if (env.obs_shape, env.obs_dtype) != (checkpoint.obs_shape, checkpoint.obs_dtype):
        parts.append(f"observations {env.obs_shape} {env.obs_dtype} here, {checkpoint.obs_shape} "
                     f"{checkpoint.obs_dtype} in the checkpoint")
    here, there = _describe_actions(env), _describe_actions(checkpoint)
    if here != there:
        parts.append(f"actions: {here} here, {there} in the checkpoint")
    elif (env.action_low, env.action_high) != (checkpoint.action_low, checkpoint.action_high):
        parts.append(f"action bounds {env.action_low}..{env.action_high} here, "
                     f"{checkpoint.action_low}..{checkpoint.action_high} in the checkpoint")
    return "; ".join(parts) or "the spaces differ"


def check_resume(spec: JobSpec, resume: Checkpoint, spaces: SpacesSpec,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a resumed job whose env or policy the checkpoint's weights do not fit, or whose
    optimizer is not the one whose state the checkpoint holds; `shapes` are the policy's
    (`shape_of`), when known."""
    from learner.policy import shape_of
    trained_with = resume.config["a2c"]["optimizer"]
    if spec.a2c.optimizer != trained_with:
        raise InvalidSpec("a2c.optimizer", f"the checkpoint holds the state of {trained_with}, which a "
                          f"resumed job continues; leave optimizer unset or set it to {trained_with}")
    if resume.spaces != spaces:
        raise InvalidSpec("env", f"{spec.env}'s spaces do not match the checkpoint's ({resume.env_id}): "
                          + spaces_difference(spaces, resume.spaces))
    want = shapes if shapes is not None else shape_of(spaces, spec.policy)
    have = {k: tuple(v.shape) for k, v in resume.state.weights.tensors.items()}
    if want != have:
        diff = [f"missing {k}" for k in sorted(want.keys() - have.keys())]
        diff += [f"unexpected {k}" for k in sorted(have.keys() - want.keys())]
        diff += [f"{k} is {have[k]}, not {want[k]}" for k in sorted(want.keys() & have.keys())
                 if want[k] != have[k]]
        raise InvalidSpec("policy", "the checkpoint's weights do not fit this policy config ("
                          + "; ".join(diff[:4]) + "); resume with the checkpoint's own policy settings")
