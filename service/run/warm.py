"""Warm actors: rollout-worker and learner processes started before their job is known.

Starting an actor costs a new Ray worker process and its imports (Ray, gymnasium, and torch
for the learner): seconds of CPU per process,
which a small job waits for at every start. A warm actor has paid them already: it is created
idle, holding no CPU in Ray's accounting (`num_cpus=0`: the job service's own scheduler
reserves the CPUs of the job it is given), and `configure` turns it into its job's
RolloutWorker or Learner, with the same arguments, so it behaves exactly as a cold one.

The warm learner's class is in `service.run.warm_learner`: a Ray actor's process imports the
module of its class, and a rollout worker of an MLP policy never imports torch (only the
learner's module does).

A warm actor serves one job and dies with it, so jobs never share an actor's state. The job
service keeps a *spare* driver process (see `service.run.driver`) holding a set of them;
docs/architecture.md shows where they sit in a job's flow.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import ray

from workers.worker import RolloutWorker

WARM_WORKERS = 2
"""Rollout workers a spare holds: the job spec's default layout. A job with more starts the
rest cold; one with fewer leaves the rest unused."""


class WarmRolloutWorker(RolloutWorker):
    """A RolloutWorker process waiting for its job; `configure` takes RolloutWorker's arguments."""

    def __init__(self) -> None:  # the imports are done: this module imported workers.worker
        pass

    def configure(self, *args: Any) -> None:
        """Become the job's rollout worker (what `RolloutWorker(*args)` would be)."""
        RolloutWorker.__init__(self, *args)


@dataclass
class WarmActors:
    """Idle actors of one spare driver: a learner and rollout workers, handed out once each."""

    learner: Any = None
    workers: list[Any] = field(default_factory=list)

    @classmethod
    def start(cls, workers: int = WARM_WORKERS, timeout_s: float = 600.0) -> "WarmActors":
        """Create the actors and wait until each has done its imports."""
        from service.run.warm_learner import WarmLearner  # torch: not for this module's workers
        options = {"num_cpus": 0, "enable_task_events": False}
        warm = cls(ray.remote(WarmLearner).options(**options).remote(),
                   [ray.remote(WarmRolloutWorker).options(**options).remote() for _ in range(workers)])
        ray.get([a.__ray_ready__.remote() for a in [warm.learner, *warm.workers]], timeout=timeout_s)
        return warm

    def take_learner(self) -> Any | None:
        """The warm learner, once; None when it was taken."""
        learner, self.learner = self.learner, None
        return learner

    def take_worker(self) -> Any | None:
        """A warm rollout worker, or None when none is left."""
        return self.workers.pop(0) if self.workers else None

    def release(self) -> None:
        """End the actors nobody took."""
        for actor in [self.learner, *self.workers]:
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self.learner, self.workers = None, []
