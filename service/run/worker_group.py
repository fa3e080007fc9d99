"""`WorkerGroup`: a job's rollout workers, kept at full strength while the job runs.

A worker is *lost* when its process or its node dies, when it stops answering (Ray's
`ActorUnavailableError`), when the node holding its result dies, or when it hangs past the
call timeout. A lost worker is replaced by a new actor with the same index, hence the same env
seeds; Ray places it on any node with a free CPU. The replacement samples that worker's share
of the batch again, so every update still gets exactly one rollout per worker: the step count
neither double-counts nor skips a rollout. When no CPU frees up for the replacement within
`resource_timeout_s`, the job fails and says so.

An exception raised by the worker's own code (a bug, a bad env) is not a loss: doing the call
again would raise it again, so it fails the job with the error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import (ActorUnavailableError, GetTimeoutError, ObjectLostError, RayActorError,
                            RayTaskError)

from learner.spaces import SpacesSpec
from service.run.spec import JobSpec
from workers.worker import Episodes, RolloutWorker


class TrainingFailed(RuntimeError):
    """The job could not go on; the message says why."""


class LearnerLost(TrainingFailed):
    """The learner actor is gone (its process or node died, or it hung); the message says how.

    The trainer restarts the learner from its last checkpoint; only if it escapes does it end
    the job, as the TrainingFailed it is."""


class RolloutsLost(TrainingFailed):
    """The learner could not fetch a rollout: the node that held it died after it was sampled.

    The trainer has every worker sample its share again."""


def loss_of(exc: BaseException) -> str | None:
    """How a failed Ray call lost its actor, or None when the call's own code raised.

    "died" / "unreachable": the actor's process or node is gone or does not answer; "hung": no
    answer within the timeout; "result lost": its result was on a node that died; "input
    lost": an argument of the call (weights, a rollout) came from an actor or node that is
    gone, which Ray reports as a task error wrapping that loss.
    """
    if isinstance(exc, RayTaskError):
        return "input lost" if isinstance(exc, (RayActorError, ObjectLostError)) else None
    if isinstance(exc, GetTimeoutError):
        return "hung"
    if isinstance(exc, ActorUnavailableError):
        return "unreachable"
    if isinstance(exc, RayActorError):
        return "died"
    if isinstance(exc, ObjectLostError):
        return "result lost"
    return None


def first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (Ray's run to dozens of lines)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def actor_node_id(actor_self: Any) -> str:
    """Runs inside an actor, as `actor.__ray_call__.remote(actor_node_id)`: its node's id."""
    return ray.get_runtime_context().get_node_id()


def actor_placement(actor_self: Any) -> tuple[str, str | None]:
    """Runs inside the learner or a rollout worker, as `actor.__ray_call__.remote(actor_placement)`:
    its node's id and what its policy's convolutions run in (`cnn_precision` as resolved on that
    node: "float32" or "bfloat16"; None for an MLP policy)."""
    return actor_node_id(actor_self), actor_self.policy.cnn_precision


@dataclass
class Pending:
    """Rollouts being sampled: {worker index: (rollout ref, episodes ref)}, and their weights."""

    weights: Any
    refs: dict[int, tuple[Any, Any]]


class WorkerGroup:
    """W RolloutWorker actors (1 CPU each) that sample, evaluate, and replace themselves when lost."""

    def __init__(self, spec: JobSpec, spaces: SpacesSpec, sink, call_timeout_s: float,
                 resource_timeout_s: float, max_replacements: int) -> None:
        self.spec, self.spaces, self.sink = spec, spaces, sink
        self.call_timeout_s, self.resource_timeout_s = call_timeout_s, resource_timeout_s
        self.max_replacements = max_replacements
        self.replacements = 0
        self.actors: list[Any] = []

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, index: int) -> Any:
        """Worker `index`'s current actor handle (tests kill it to inject a fault)."""
        return self.actors[index]

    def _new(self, index: int) -> Any:
        """Rollout worker `index` (a replacement gets the same index, hence the same env seeds).

        Without task events (as the learner): Ray's GCS keeps an event record of every actor
        call, up to its task-event cap, and a job makes hundreds of calls a second, so the GCS
        grows for as long as the job runs (docs/cluster.md). Ray's state API and dashboard then
        do not list these calls.
        """
        return ray.remote(RolloutWorker).options(num_cpus=1, enable_task_events=False).remote(*self._args(index))

    def _args(self, index: int) -> tuple:
        spec = self.spec
        return (spec.env, spec.env_kwargs, spec.envs_per_worker, spec.steps_per_env, self.spaces,
                spec.policy, spec.seed, index, spec.cnn_precision)

    def create(self, warm=None) -> None:
        """Create the worker actors without waiting: their processes start (and do their imports)
        while the caller does other work, such as starting the learner. Warm actors of `warm`
        (`service.run.warm.WarmActors`), while there are any, are configured instead."""
        self.actors = []
        for index in range(self.spec.workers):
            actor = warm.take_worker() if warm is not None else None
            if actor is None:
                actor = self._new(index)
            else:
                actor.configure.remote(*self._args(index))
            self.actors.append(actor)

    def start(self, weights) -> list[tuple[str, str | None]]:
        """Start every worker `create` made with `weights`, waiting up to resource_timeout_s for CPUs.

        Returns each worker's `actor_placement`: its node id and its convolutions' precision.
        """
        try:
            ray.get([a.set_weights.remote(weights) for a in self.actors], timeout=self.resource_timeout_s)
            return ray.get([a.__ray_call__.remote(actor_placement) for a in self.actors], timeout=self.call_timeout_s)
        except GetTimeoutError:
            raise TrainingFailed(f"rollout workers did not start within {self.resource_timeout_s:g}s "
                                 f"(resource_timeout_s): {_cpus()}") from None
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start fails the job
            raise TrainingFailed(f"rollout workers failed to start: {first_line(exc)}") from exc

    def sample(self, weights) -> Pending:
        """Start one rollout on every worker with `weights`."""
        return Pending(weights, {i: self._sample(i, weights) for i in range(len(self.actors))})

    def _sample(self, index: int, weights) -> tuple[Any, Any]:
        return tuple(self.actors[index].sample.options(num_returns=2).remote(weights))

    def gather(self, pending: Pending) -> tuple[list[Any], list[Episodes]]:
        """Every worker's rollout (refs, for the learner) and finished episodes, in worker order.

        A lost worker is replaced and samples its share again with the same weights.
        """
        episodes: list[Episodes] = []
        for i in range(len(self.actors)):
            while True:
                try:
                    episodes.append(ray.get(pending.refs[i][1], timeout=self.call_timeout_s))
                    break
                except Exception as exc:  # noqa: BLE001 - sorted by _recover
                    self._recover(i, exc, "rollout")
                    pending.refs[i] = self._sample(i, pending.weights)
        return [pending.refs[i][0] for i in range(len(self.actors))], episodes

    def evaluate(self, weights, episodes: int, seed: int) -> list[float]:
        """Returns of `episodes` deterministic episodes, played by worker 0 on a fresh env."""
        while True:
            try:
                return ray.get(self.actors[0].evaluate.remote(weights, episodes, seed),
                               timeout=self.call_timeout_s)
            except Exception as exc:  # noqa: BLE001 - sorted by _recover
                self._recover(0, exc, "evaluation")

    def kill(self) -> None:
        """End every worker actor."""
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)

    def _recover(self, index: int, exc: BaseException, what: str) -> None:
        """Replace worker `index` if `exc` says it was lost; otherwise raise what it means."""
        loss = loss_of(exc)
        if loss is None:
            raise TrainingFailed(f"worker {index}'s {what} failed: {first_line(exc)}") from exc
        if loss == "input lost":  # the weights it was given are gone with the learner
            raise LearnerLost(f"worker {index} could not get the learner's weights: {first_line(exc)}")
        self._replace(index, f"{loss}: {first_line(exc)}")

    def _replace(self, index: int, why: str) -> None:
        """Swap worker `index` for a new actor and wait (up to resource_timeout_s) until it runs."""
        while True:
            self.replacements += 1
            if self.replacements > self.max_replacements:
                raise TrainingFailed(f"rollout workers were lost {self.replacements} times (limit "
                                     f"{self.max_replacements}); last: worker {index} {why}")
            with contextlib.suppress(Exception):  # a hung or unreachable one must not hold its CPU
                ray.kill(self.actors[index])
            self.sink.event("worker_lost", f"worker {index} {why}; starting a replacement "
                            f"(waits up to {self.resource_timeout_s:g}s for a free CPU)")
            self.actors[index] = self._new(index)
            try:
                node = ray.get(self.actors[index].__ray_call__.remote(actor_node_id), timeout=self.resource_timeout_s)
            except GetTimeoutError:
                raise TrainingFailed(
                    f"worker {index} was lost and its replacement got no CPU within "
                    f"{self.resource_timeout_s:g}s (resource_timeout_s): {_cpus()}") from None
            except Exception as exc:  # noqa: BLE001 - the replacement itself was lost: try again
                if loss_of(exc) in (None, "input lost"):
                    raise TrainingFailed(f"worker {index}'s replacement failed to start: {first_line(exc)}") from exc
                why = f"replacement {loss_of(exc)}: {first_line(exc)}"
                continue
            self.sink.event("worker_replaced", f"worker {index} runs again on node {node[:12]} "
                            f"({self.replacements} replacement{'s' * (self.replacements != 1)} so far)")
            return


def _cpus() -> str:
    """E.g. "the cluster has 0 of 4 CPUs free", for resource errors."""
    free = ray.available_resources().get("CPU", 0)
    total = ray.cluster_resources().get("CPU", 0)
    return f"the cluster has {free:g} of {total:g} CPUs free"
