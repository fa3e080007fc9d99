"""The vocabulary the service records and shows: job states, ids, and the metrics row.

One definition each, used by the job store, the job manager, the training loop, the HTTP API
and the command line (see docs/architecture.md).
"""

from __future__ import annotations

import uuid
from enum import Enum

from pydantic import BaseModel, ConfigDict

JOB_ID_PATTERN = r"^[0-9a-f]{12}$"
"""Job ids are 12 lowercase hex digits; nothing else ever reaches a path or a query."""
CHECKPOINT_ID_PATTERN = r"^(latest|best|step-[0-9]{10,19})$"
"""Checkpoint ids as the trainer writes them (`step-<10+ digits>`), or `latest` (the highest
step) or `best` (the highest evaluation return)."""
VIDEO_ID_PATTERN = r"^step-[0-9]{10,19}$"
"""Video ids: the step of the evaluation they show, named as checkpoints are (`step-<10+ digits>`)."""


class JobStatus(str, Enum):
    """A job's state, as Ray Jobs names them; SUCCEEDED, FAILED and STOPPED are never left."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        """Whether a job in this state has ended for good."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED})
"""The states a job never leaves."""


def new_job_id() -> str:
    """A fresh job id (matches JOB_ID_PATTERN)."""
    return uuid.uuid4().hex[:12]


def checkpoint_id(step: int) -> str:
    """The id of the checkpoint taken at env step `step` (it names its archive file too)."""
    return f"step-{step:010d}"


class MetricsRow(BaseModel):
    """One metrics row per update, as the trainer records it and the API and CLI show it.

    `eval_return_mean` is present on evaluation rows only. Values that are not finite are
    stored as null. Rows may carry keys added by a later version (`extra="allow"`).
    """

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    step: int
    """Env steps trained on so far (over all workers and envs)."""
    wall_s: float | None = None
    """Seconds since the training loop started (start-up excluded)."""
    env_steps_per_s: float | None = None
    """The batch over the wall time since the previous row."""
    episode_return_mean: float | None = None
    """Mean return of the last 20 finished episodes (full episodes, raw rewards)."""
    episode_return_min: float | None = None
    """Lowest return of those 20."""
    episode_return_max: float | None = None
    """Highest return of those 20."""
    episode_length_mean: float | None = None
    """Mean length of the episodes that finished in this update."""
    episodes: int | None = None
    """Episodes that finished in this update."""
    policy_loss: float | None = None
    value_loss: float | None = None
    entropy: float | None = None
    loss: float | None = None
    grad_norm: float | None = None
    """Global L2 norm of the gradients before clipping."""
    explained_variance: float | None = None
    """1 - Var(returns - values) / Var(returns) over the batch."""
    learning_rate: float | None = None
    entropy_coef: float | None = None
    weights_version: int | None = None
    """Version of the weights after this update."""
    policy_lag: int | None = None
    """How many versions behind the learner the oldest rollout of this update was."""
    eval_return_mean: float | None = None
    """Mean return of the deterministic policy on fresh envs (evaluation rows only)."""


METRIC_KEYS: tuple[str, ...] = tuple(MetricsRow.model_fields)
"""Every key of a metrics row, in order."""
UPDATE_STATS: tuple[str, ...] = ("policy_loss", "value_loss", "entropy", "loss", "grad_norm",
                                 "explained_variance", "learning_rate", "entropy_coef",
                                 "weights_version", "policy_lag")
"""The keys of a row that come from the learner's update stats."""
