"""The training driver: starts the actors, runs the A2C loop, records metrics and checkpoints.

Faults (each reported as an event of the job):
- a rollout worker lost with its process or node, or hung, is replaced by `WorkerGroup` and
  samples its share of the batch again;
- a rollout lost before the learner fetched it is sampled again by every worker;
- a learner lost with its process or node, or hung, is restarted from the last checkpoint, at
  most `spec.max_learner_restarts` times; the sink is told to rewind to the checkpoint's step,
  so the metrics rows past it are replaced by those of the resumed run, never duplicated.

The driver itself writes every checkpoint archive (through `service.storage`), so it does not
matter on which node the learner ran.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError

from learner.checkpoint import Checkpoint
from learner.learner import Learner
from learner.rollout import LearnerState
from learner.spaces import SpacesSpec
from service.cluster import cluster_has_gpu
from service.records import UPDATE_STATS, JobStatus, MetricsRow, checkpoint_id, new_job_id
from service import storage
from service.run.checkpoints import read_checkpoint, write_checkpoint
from service.run.sinks import CheckpointInfo, NullSink, TrainingSink
from service.run.spec import InvalidSpec, JobSpec, job_spaces
from service.run.videos import TrainingVideos
from service.run.warm import WarmActors
from service.run.worker_group import (LearnerLost, RolloutsLost, TrainingFailed, WorkerGroup, actor_placement,
                                      first_line, loss_of)
from workers.worker import Episodes

log = logging.getLogger(__name__)

RETURN_WINDOW = 20
"""Episode returns and summary means are over the last this many finished episodes."""


def _finite(value: Any) -> Any:
    """A metric value as JSON can carry it: NaN and inf become None."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


class Trainer:
    """Runs one job: `run()` trains to `spec.total_steps` or until `request_stop()`.

    `location` is the job's run directory, a path or a storage URI: checkpoints go to
    `<location>/checkpoints/step-<10 digits>.tar.gz`, videos (`service.run.videos`) to
    `<location>/videos/`.
    """

    def __init__(self, spec: JobSpec, location, sink: TrainingSink | None = None,
                 job_id: str | None = None, resume: Checkpoint | None = None,
                 resource_timeout_s: float = 600.0, call_timeout_s: float = 600.0,
                 max_worker_replacements: int = 10, warm: WarmActors | None = None) -> None:
        self.spec, self.location = spec, str(location)
        self.warm = warm
        """Idle actors to configure instead of starting new ones (see `service.run.warm`)."""
        self.sink = sink or NullSink()
        self.job_id = job_id or new_job_id()
        self.resume = resume
        self.resource_timeout_s = resource_timeout_s
        """Longest wait for cluster resources: for the actors at start and for replacements."""
        self.call_timeout_s = call_timeout_s
        """Longest wait for any one actor call; an actor that hangs past it counts as lost."""
        self.max_worker_replacements = max_worker_replacements
        self._stop = threading.Event()
        self.returns: collections.deque[float] = collections.deque(maxlen=RETURN_WINDOW)
        self.best_return_mean: float | None = None
        self._returns_at_checkpoint: tuple[list[float], float | None] = ([], None)
        self.last_checkpoint: CheckpointInfo | None = None
        self.best_checkpoint: CheckpointInfo | None = None
        """The checkpoint with the highest evaluation return so far (of equals, the later): a new
        best evaluation is always checkpointed, so the best policy seen is never lost."""
        self.last_eval: float | None = None
        self.use_gpu = False
        self.learner: Any = None
        self.learner_node = ""
        self.learner_precision: str | None = None
        self.learner_restarts = 0
        self.workers: WorkerGroup | None = None
        self.videos: TrainingVideos | None = None
        self.nonfinite_in_a_row = 0
        self._last_row_t = 0.0
        """When the previous metrics row was made (time.monotonic)."""

    def request_stop(self) -> None:
        """Ask the loop to stop after the update in flight (the one whose rollouts are being
        sampled when the request comes); it then evaluates the policy into a final checkpoint."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    def _check_cluster(self) -> bool:
        """Refuse a job the cluster can never hold; returns whether the learner gets a GPU."""
        spec = self.spec
        total_cpus = ray.cluster_resources().get("CPU", 0)
        if total_cpus < spec.cpus_needed:
            raise InvalidSpec("workers", f"{spec.workers} workers and the learner (learner_cpus={spec.learner_cpus}) need "
                              f"{spec.cpus_needed} CPUs; the cluster has {total_cpus:g}")
        has_gpu = cluster_has_gpu()
        if spec.learner_device == "cuda" and not has_gpu:
            raise InvalidSpec("learner_device", "cuda was requested but the cluster has no GPU; use auto or cpu")
        return has_gpu and spec.learner_device != "cpu"

    def _await_learner(self) -> None:
        """Wait for the Learner `_create_learner` asked for, and report its device and node."""
        try:
            _, reason = ray.get(self.learner.device_info.remote(), timeout=self.resource_timeout_s)
            node, self.learner_precision = ray.get(self.learner.__ray_call__.remote(actor_placement),
                                                   timeout=self.call_timeout_s)
        except GetTimeoutError:
            raise TrainingFailed(f"the learner did not start within {self.resource_timeout_s:g}s "
                                 f"(resource_timeout_s; are CPUs{' and a GPU' * self.use_gpu} free?)") from None
        except Exception as exc:  # noqa: BLE001 - a learner that cannot start fails the job
            raise TrainingFailed(f"the learner failed to start: {first_line(exc)}") from exc
        log.info("learner on node %s: %s", node, reason)
        self.sink.event("device", reason)
        self.learner_node = node

    def _placement(self, placements: list[tuple[str, str | None]]) -> str:
        """The placement event: the learner's node, each worker's, and for a convolutional policy
        the workers' precision, named when it differs from the learner's (cnn_precision auto is
        resolved on each node: a worker whose CPU has no bfloat16 units acts in float32)."""
        message = (f"learner on node {self.learner_node[:12]}; workers on nodes "
                   + ", ".join(node[:12] for node, _ in placements))
        precisions = sorted({precision for _, precision in placements if precision})
        if precisions:
            message += f"; workers' convolutions in {' and '.join(precisions)}"
            if precisions != [self.learner_precision]:
                message += (f", the learner's in {self.learner_precision}: workers act with another function "
                            f"than the one trained (set cnn_precision to float32 or bfloat16 to have one)")
                log.warning("placement: %s", message)
        return message

    def _create_learner(self, spaces: SpacesSpec, restore: LearnerState | None) -> None:
        """Ask Ray for the Learner actor (`learner_cpus` CPUs, 1 GPU when `self.use_gpu`), without
        waiting for it: the warm one when there is one and no GPU is wanted, else a new actor. Its
        calls make no task events, as the workers' (see `WorkerGroup._new`)."""
        spec = self.spec
        args = (spaces, spec.policy, spec.a2c, spec.total_steps, spec.seed, spec.learner_device,
                self.use_gpu, restore, spec.learner_cpus, spec.cnn_precision)
        warm = self.warm.take_learner() if self.warm is not None and not self.use_gpu else None
        if warm is not None:
            warm.configure.remote(*args)
            self.learner = warm
            return
        self.learner = ray.remote(Learner).options(
            num_cpus=spec.learner_cpus, num_gpus=1 if self.use_gpu else 0, enable_task_events=False).remote(*args)

    def _learner_get(self, ref, what: str):
        """ray.get of a learner call, sorting failures into LearnerLost, RolloutsLost or TrainingFailed."""
        try:
            return ray.get(ref, timeout=self.call_timeout_s)
        except Exception as exc:  # noqa: BLE001 - sorted below
            loss = loss_of(exc)
            if loss is None:
                raise TrainingFailed(f"{what} failed: {first_line(exc)}") from exc
            if loss == "input lost":
                raise RolloutsLost(f"{what} could not fetch a rollout: {first_line(exc)}") from exc
            raise LearnerLost(f"the learner {loss} during {what}: {first_line(exc)}") from exc

    def run(self) -> dict[str, Any]:
        """Train; returns the summary (see `service.train` for its keys) with `status`."""
        spec = self.spec
        t0 = self._t0 = time.monotonic()
        spaces = job_spaces(spec, self.resume)  # checked before any actor starts
        self.use_gpu = self._check_cluster()
        start = self.resume.state if self.resume else None
        if self._stop.is_set():  # stopped before it started: no actor, no checkpoint
            return self._summary(start.step if start else 0, 0, time.monotonic() - t0, 0.0, JobStatus.STOPPED)
        self.workers = WorkerGroup(spec, spaces, self.sink, self.call_timeout_s, self.resource_timeout_s,
                                   self.max_worker_replacements)
        self.videos = TrainingVideos(spec, spaces, self.location, self.sink)
        try:
            # The learner is asked for first (it may need the GPU node's CPU); the workers'
            # processes then start while it does.
            self._create_learner(spaces, start)
            self.workers.create(self.warm)
            if self.warm is not None:
                self.warm.release()  # what this job does not use
            self._await_learner()
            placements = self.workers.start(self.learner.weights.remote())
            self.sink.event("placement", self._placement(placements))
            startup_s = time.monotonic() - t0
            self.sink.event("started", f"{spec.workers} worker{'s' * (spec.workers != 1)} x "
                            f"{spec.envs_per_worker} envs, T={spec.steps_per_env}, mode={spec.mode}, "
                            f"startup {startup_s:.1f}s")
            step, updates = (start.step, start.updates) if start else (0, 0)
            loop_t0 = self._last_row_t = time.monotonic()
            weights = self.learner.weights.remote()
            pending = self.workers.sample(weights)
            # The loop ends after an update that saw the stop (or reached total_steps), so that
            # the final policy is always evaluated and checkpointed: a stop between that check
            # and the loop's would leave the final checkpoint unevaluated.
            done = step >= spec.total_steps or self._stop.is_set()
            while not done:
                try:
                    rollouts, episodes = self.workers.gather(pending)
                    stats_ref, next_weights = self.learner.update_and_weights.options(
                        num_returns=2).remote(*rollouts)
                    if step + spec.a2c.steps_per_batch < spec.total_steps:
                        # Sync waits for the new weights (exact A2C); async samples with the old (lag 1).
                        pending = self.workers.sample(next_weights if spec.mode == "sync" else weights)
                    stats = self._learner_get(stats_ref, "the learner's update")
                    weights, step, updates = next_weights, stats["step"], updates + 1
                    last = done = step >= spec.total_steps or self._stop.is_set()
                    row = self._row(stats, episodes, loop_t0)
                    evaluated = eval_seed = None
                    if last or (spec.eval_every and updates % spec.eval_every == 0):
                        eval_seed = self._eval_seed(updates)
                        evaluated = row.eval_return_mean = self.last_eval = self._evaluate(weights, eval_seed)
                    self.sink.metrics(row.model_dump(exclude_unset=True))
                    self.videos.after_update(weights, step, updates, eval_seed)  # never waits
                    self._count_nonfinite(stats)  # after the row: the failing update is recorded too
                    if updates % spec.checkpoint_every == 0 or last or self._is_new_best(evaluated):
                        self._checkpoint(spaces, evaluated)
                except RolloutsLost as exc:  # the learner did not update: sample this batch again
                    self.sink.event("rollouts_lost", f"{exc}; every worker samples its share again")
                    pending = self.workers.sample(weights)
                except LearnerLost as exc:
                    step, updates = self._restart_learner(spaces, exc)
                    weights = self.learner.weights.remote()
                    pending = self.workers.sample(weights)
            wall_s = time.monotonic() - loop_t0
            # A final checkpoint, unless this run made no update (stopped while starting): the
            # state is then the one it started from, which needs no new archive.
            trained_here = step != (start.step if start else 0)
            if trained_here and (self.last_checkpoint is None or self.last_checkpoint.step != step):
                self._checkpoint(spaces)
            self.videos.finish(self._stop)  # the last due video, unless stopped
        finally:
            self.videos.close()
            self.workers.kill()
            if self.learner is not None:
                with contextlib.suppress(Exception):
                    ray.kill(self.learner)
        return self._summary(step, step - (start.step if start else 0), startup_s, wall_s,
                             # A stop that came as the last update finished changed nothing.
                             JobStatus.STOPPED if self._stop.is_set() and step < spec.total_steps
                             else JobStatus.SUCCEEDED)

    def _summary(self, step: int, trained: int, startup_s: float, wall_s: float, status: JobStatus) -> dict[str, Any]:
        """What `run` returns: see `service.train` for the keys."""
        return {
            "job_id": self.job_id, "env": self.spec.env, "steps": step,
            "wall_s": round(time.monotonic() - self._t0, 3), "startup_s": round(startup_s, 3),
            "env_steps_per_s": round(trained / wall_s, 1) if wall_s > 0 else None,
            "final_return_mean": _mean(self.returns), "best_return_mean": self.best_return_mean,
            "checkpoint": self.last_checkpoint.location if self.last_checkpoint else None,
            "final_eval_return_mean": self.last_eval,
            "best_checkpoint": self.best_checkpoint.location if self.best_checkpoint else None,
            "best_eval_return_mean": self.best_checkpoint.eval_return_mean if self.best_checkpoint else None,
            "status": status,
        }

    def _restart_learner(self, spaces: SpacesSpec, exc: LearnerLost) -> tuple[int, int]:
        """Replace a lost learner by one restored from the last checkpoint; returns (step, updates).

        Fails the job once `spec.max_learner_restarts` restarts are used up.
        """
        self.learner_restarts += 1
        limit = self.spec.max_learner_restarts
        if self.learner_restarts > limit:
            raise TrainingFailed(f"{exc}; not restarting it: max_learner_restarts={limit} "
                                 f"restart{'s' * (limit != 1)} already used") from None
        with contextlib.suppress(Exception):
            ray.kill(self.learner)
        if self.last_checkpoint is not None:
            ckpt = self.last_checkpoint
            restore, source = read_checkpoint(ckpt.location).state, f"checkpoint {ckpt.id}"
        elif self.resume is not None:
            restore, source = self.resume.state, "the checkpoint the job started from"
        else:
            restore, source = None, "the beginning (no checkpoint yet)"
        step, updates = (restore.step, restore.updates) if restore else (0, 0)
        self.sink.event("learner_lost", f"{exc}; restarting it from {source}, step {step} "
                        f"(restart {self.learner_restarts} of at most {limit})")
        # The rows after `step` are void: the resumed run records those steps again.
        self.sink.rewind(step)
        returns, self.best_return_mean = self._returns_at_checkpoint if restore else ([], None)
        self.returns = collections.deque(returns, maxlen=RETURN_WINDOW)
        self.nonfinite_in_a_row = 0
        if self.spec.learner_device == "auto":  # the GPU node may be what was lost: then use a CPU
            self.use_gpu = cluster_has_gpu()
        self._create_learner(spaces, restore)
        self._await_learner()
        self.sink.event("learner_restarted", f"the learner runs again on node {self.learner_node[:12]} "
                        f"from step {step}; metrics rows after step {step} are recorded again")
        return step, updates

    def _row(self, stats: dict[str, Any], episodes: list[Episodes], loop_t0: float) -> MetricsRow:
        """The metrics row of one update.

        `env_steps_per_s` is the batch over the wall time since the previous row, evaluation and
        checkpoints included: rollouts overlap those, so timing one update alone would swing
        between a slow update and an inflated next one.
        """
        finished = np.concatenate([e.returns for e in episodes])
        lengths = np.concatenate([e.lengths for e in episodes])
        self.returns.extend(finished.tolist())
        window = list(self.returns)
        mean = _mean(window)
        if mean is not None and len(window) == RETURN_WINDOW:
            self.best_return_mean = max(mean, self.best_return_mean or -np.inf)
        now = time.monotonic()
        self._last_row_t, since = now, self._last_row_t
        return MetricsRow(
            step=stats["step"], wall_s=round(now - loop_t0, 4),
            env_steps_per_s=round(self.spec.a2c.steps_per_batch / max(now - since, 1e-9), 1),
            episode_return_mean=mean,
            episode_return_min=float(np.min(window)) if window else None,
            episode_return_max=float(np.max(window)) if window else None,
            episode_length_mean=_mean(lengths), episodes=int(finished.size),
            **{k: _finite(stats.get(k)) for k in UPDATE_STATS})

    def _count_nonfinite(self, stats: dict[str, Any]) -> None:
        """Fail the job after `max_nonfinite_updates` updates in a row skipped for NaN/inf."""
        if stats["nonfinite_steps"]:
            self.sink.event("nonfinite", f"update at step {stats['step']}: skipped "
                            f"{stats['nonfinite_steps']} gradient step(s) with NaN/inf")
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if stats["skipped"] else 0
        if self.nonfinite_in_a_row >= self.spec.max_nonfinite_updates:
            raise TrainingFailed(f"{self.nonfinite_in_a_row} updates in a row had NaN/inf in "
                                 "observations, loss or gradients; the weights were kept finite")

    def _eval_seed(self, updates: int) -> int:
        """The first reset seed of the evaluation after `updates` updates (its video's too)."""
        return self.spec.seed + 1_000_003 * (updates + 1)

    def _evaluate(self, weights, seed: int) -> float:
        """Mean return of the deterministic policy over eval_episodes fresh episodes from reset seed `seed`."""
        return float(np.mean(self.workers.evaluate(weights, self.spec.eval_episodes, seed)))

    def _is_new_best(self, evaluated: float | None) -> bool:
        """Whether an evaluation return beats every checkpointed one (so it must be checkpointed)."""
        best = self.best_checkpoint
        return evaluated is not None and (best is None or evaluated > best.eval_return_mean)

    def _checkpoint(self, spaces: SpacesSpec, evaluated: float | None = None) -> CheckpointInfo:
        """Write the learner's state as an archive (by the driver, wherever the learner runs);
        `evaluated` is the evaluation return at this step, if one ran."""
        state = self._learner_get(self.learner.state.remote(), "the learner's checkpoint")
        if not all(np.isfinite(t).all() for t in state.weights.tensors.values()):
            raise TrainingFailed(f"weights at step {state.step} are not finite; not checkpointed")
        ckpt_id = checkpoint_id(state.step)
        location = storage.join(self.location, "checkpoints", f"{ckpt_id}.tar.gz")
        mean = _mean(self.returns)
        size = write_checkpoint(location, state, spaces, self.spec.env, self.spec.model_dump(mode="json"),
                                extra={"job_id": self.job_id, "return_mean": mean, "eval_return_mean": evaluated})
        info = CheckpointInfo(ckpt_id, location, state.step, mean, size, time.time(), evaluated)
        self.last_checkpoint = info
        if evaluated is not None and (self.best_checkpoint is None
                                      or evaluated >= self.best_checkpoint.eval_return_mean):
            self.best_checkpoint = info
        self._returns_at_checkpoint = (list(self.returns), self.best_return_mean)
        self.sink.checkpoint(info)
        return info
