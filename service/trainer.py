"""The training driver: starts the actors, runs the A2C loop, records metrics and checkpoints."""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray

from learner.checkpoint import Checkpoint, write_archive
from learner.learner import Learner
from learner.policy import SpacesSpec
from service.cluster import cluster_has_gpu
from service.spec import InvalidSpec, JobSpec
from workers.env import UnknownEnvironment, describe_spaces
from workers.worker import Episodes, RolloutWorker

log = logging.getLogger(__name__)

RETURN_WINDOW = 20
"""Episode returns and summary means are over the last this many finished episodes."""


class TrainingFailed(RuntimeError):
    """The job could not go on; the message says why."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint archive that was written, as job stores and listings report it."""

    id: str
    path: Path
    step: int
    return_mean: float | None
    size_bytes: int
    created: float


class TrainingSink(Protocol):
    """Where a Trainer reports what happens: job stores, metric files, progress bars."""

    def event(self, kind: str, message: str) -> None:
        """Something worth a line in the job's history (device chosen, worker replaced...)."""

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics row per update, with the keys of ARCHITECTURE.md."""

    def checkpoint(self, info: CheckpointInfo) -> None:
        """A checkpoint archive was written."""


class NullSink:
    """A sink that drops everything."""

    def event(self, kind: str, message: str) -> None:
        """Drop the event."""

    def metrics(self, row: dict[str, Any]) -> None:
        """Drop the row."""

    def checkpoint(self, info: CheckpointInfo) -> None:
        """Drop the record."""


def _finite(value: Any) -> Any:
    """A metric value as JSON can carry it: NaN and inf become None."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


class Trainer:
    """Runs one job: `run()` trains to `spec.total_steps` or until `request_stop()`."""

    timeout_s: float = 600.0
    """Longest wait for any one actor call; a lost actor must not hang the job."""

    def __init__(self, spec: JobSpec, out_dir: Path, sink: TrainingSink | None = None,
                 job_id: str | None = None, resume: Checkpoint | None = None,
                 resource_timeout_s: float = 600.0, max_worker_replacements: int = 10) -> None:
        self.spec, self.out_dir = spec, Path(out_dir)
        self.sink = sink or NullSink()
        self.job_id = job_id or uuid.uuid4().hex[:12]
        self.resume = resume
        self.resource_timeout_s = resource_timeout_s
        self._stop = threading.Event()
        self.returns: collections.deque[float] = collections.deque(maxlen=RETURN_WINDOW)
        self.best_return_mean: float | None = None
        self.last_checkpoint: CheckpointInfo | None = None
        self.workers: list[Any] = []
        self.worker_replacements = 0
        self.max_worker_replacements = max_worker_replacements
        self.nonfinite_in_a_row = 0

    def request_stop(self) -> None:
        """Ask the loop to stop after the current update; it then writes a final checkpoint."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    def _spaces(self) -> SpacesSpec:
        """The env's spaces, checked for support before any actor starts."""
        try:
            spaces = describe_spaces(self.spec.env, self.spec.env_kwargs)
        except UnknownEnvironment as exc:
            raise InvalidSpec("env", str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - e.g. bad env_kwargs raise TypeError in the env
            raise InvalidSpec("env_kwargs", f"{self.spec.env} cannot be made: {exc}") from None
        if self.resume is not None and self.resume.spaces != spaces:
            raise InvalidSpec("resume", f"checkpoint spaces {self.resume.spaces} do not match {self.spec.env}")
        return spaces

    def _start_actors(self, spaces: SpacesSpec) -> Any:
        """One Learner (GPU when the cluster has one and the spec allows) and W RolloutWorkers."""
        spec = self.spec
        total_cpus = ray.cluster_resources().get("CPU", 0)
        if total_cpus < spec.workers + 1:
            raise InvalidSpec("workers", f"{spec.workers} workers and a learner need "
                              f"{spec.workers + 1} CPUs; the cluster has {total_cpus:g}")
        has_gpu = cluster_has_gpu()
        if spec.learner_device == "cuda" and not has_gpu:
            raise InvalidSpec("learner_device", "cuda was requested but the cluster has no GPU; use auto or cpu")
        use_gpu = has_gpu and spec.learner_device != "cpu"
        learner = ray.remote(Learner).options(num_cpus=1, num_gpus=1 if use_gpu else 0).remote(
            spaces, spec.policy, spec.a2c, spec.total_steps, spec.seed, spec.learner_device,
            use_gpu, self.resume.state if self.resume else None)
        self.workers = [self._new_worker(spaces, i) for i in range(spec.workers)]
        return learner

    def _new_worker(self, spaces: SpacesSpec, index: int) -> Any:
        """Rollout worker `index` (a replacement gets the same index, hence the same env seeds)."""
        spec = self.spec
        return ray.remote(RolloutWorker).options(num_cpus=1).remote(
            spec.env, spec.env_kwargs, spec.envs_per_worker, spec.steps_per_env, spaces,
            spec.policy, spec.seed, index)

    def _sample(self, weights, indices=None) -> dict[int, tuple[Any, Any]]:
        """Start a rollout on each worker (or those in `indices`): {index: (rollout, episodes)}."""
        indices = range(len(self.workers)) if indices is None else indices
        return {i: tuple(self.workers[i].sample.options(num_returns=2).remote(weights)) for i in indices}

    def _gather(self, pending: dict[int, tuple[Any, Any]], weights, spaces: SpacesSpec
                ) -> tuple[list[Any], list[Episodes]]:
        """Wait for every worker's rollout; a worker that died is replaced and samples again.

        Each worker contributes exactly one rollout per update, so a replacement neither
        double-counts nor skips steps.
        """
        episodes: list[Episodes] = []
        for i in range(len(self.workers)):
            while True:
                try:
                    episodes.append(self._get(pending[i][1], f"worker {i}'s rollout", raw=True))
                    break
                except ray.exceptions.RayActorError as exc:
                    self._replace_worker(i, spaces, exc)
                    pending.update(self._sample(weights, [i]))
        return [pending[i][0] for i in range(len(self.workers))], episodes

    def _replace_worker(self, index: int, spaces: SpacesSpec, exc: Exception) -> None:
        """Swap a dead worker for a new actor (Ray places it on any node with a free CPU)."""
        self.worker_replacements += 1
        if self.worker_replacements > self.max_worker_replacements:
            raise TrainingFailed(f"rollout workers died {self.worker_replacements} times "
                                 f"(limit {self.max_worker_replacements}); last: {exc}")
        ray.kill(self.workers[index])
        self.workers[index] = self._new_worker(spaces, index)
        self.sink.event("worker_replaced", f"worker {index} died ({type(exc).__name__}); "
                        f"started a replacement ({self.worker_replacements} so far)")

    def _get(self, refs, what: str, timeout: float | None = None, raw: bool = False):
        """ray.get with a timeout, turning a hang or a dead actor into TrainingFailed.

        With `raw`, actor deaths are raised as they are, for the caller to recover from.
        """
        try:
            return ray.get(refs, timeout=timeout or self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TrainingFailed(f"timed out after {timeout or self.timeout_s:.0f}s waiting for {what}") from None
        except ray.exceptions.RayActorError as exc:
            if raw:
                raise
            raise TrainingFailed(f"{what} failed: actor died: {exc}") from None

    def run(self) -> dict[str, Any]:
        """Train; returns the summary (keys of ARCHITECTURE.md plus `status`)."""
        spec, t0 = self.spec, time.monotonic()
        spaces = self._spaces()
        learner = self._start_actors(spaces)
        try:
            weights = learner.weights.remote()
            _, reason = self._get(learner.device_info.remote(), "the learner to start (are CPUs free?)",
                                  self.resource_timeout_s)
            self.sink.event("device", reason)
            self._get([w.set_weights.remote(weights) for w in self.workers],
                      "rollout workers to start (are CPUs free?)", self.resource_timeout_s)
            startup_s = time.monotonic() - t0
            self.sink.event("started", f"{spec.workers} workers x {spec.envs_per_worker} envs, "
                            f"T={spec.steps_per_env}, mode={spec.mode}, startup {startup_s:.1f}s")
            step = self.resume.state.step if self.resume else 0
            updates = self.resume.state.updates if self.resume else 0
            loop_t0 = time.monotonic()
            pending, pending_weights = self._sample(weights), weights
            while step < spec.total_steps and not self._stop.is_set():
                tick = time.monotonic()
                rollouts, episodes = self._gather(pending, pending_weights, spaces)
                stats_ref = learner.update.remote(*rollouts)
                next_weights = learner.weights.remote()
                if step + spec.a2c.steps_per_batch < spec.total_steps:
                    # Sync waits for the new weights (exact A2C); async samples with the old (lag 1).
                    pending_weights = next_weights if spec.mode == "sync" else weights
                    pending = self._sample(pending_weights)
                weights = next_weights
                stats = self._get(stats_ref, "the learner's update")
                step, updates = stats["step"], updates + 1
                self._count_nonfinite(stats)
                last = step >= spec.total_steps or self._stop.is_set()
                row = self._row(stats, episodes, tick, loop_t0)
                if last or (spec.eval_every and updates % spec.eval_every == 0):
                    row["eval_return_mean"] = self._evaluate(weights, updates, spaces)
                self.sink.metrics(row)
                if updates % spec.checkpoint_every == 0 or last:
                    self._checkpoint(learner, spaces)
            wall_s = time.monotonic() - loop_t0
            if self.last_checkpoint is None or self.last_checkpoint.step != step:
                self._checkpoint(learner, spaces)
        finally:
            for actor in [learner, *self.workers]:
                ray.kill(actor)
        trained = step - (self.resume.state.step if self.resume else 0)
        return {
            "job_id": self.job_id, "env": spec.env, "steps": step,
            "wall_s": round(time.monotonic() - t0, 3), "startup_s": round(startup_s, 3),
            "env_steps_per_s": round(trained / wall_s, 1) if wall_s > 0 else None,
            "final_return_mean": _mean(self.returns), "best_return_mean": self.best_return_mean,
            "checkpoint": str(self.last_checkpoint.path) if self.last_checkpoint else None,
            "status": "STOPPED" if self._stop.is_set() else "SUCCEEDED",
        }

    def _row(self, stats: dict[str, Any], episodes: list[Episodes], tick: float,
             loop_t0: float) -> dict[str, Any]:
        """The metrics row of one update."""
        finished = np.concatenate([e.returns for e in episodes])
        lengths = np.concatenate([e.lengths for e in episodes])
        self.returns.extend(finished.tolist())
        window = list(self.returns)
        mean = _mean(window)
        if mean is not None and len(window) == RETURN_WINDOW:
            self.best_return_mean = max(mean, self.best_return_mean or -np.inf)
        now = time.monotonic()
        return {
            "step": stats["step"], "wall_s": round(now - loop_t0, 4),
            "env_steps_per_s": round(self.spec.a2c.steps_per_batch / max(now - tick, 1e-9), 1),
            "episode_return_mean": mean,
            "episode_return_min": float(np.min(window)) if window else None,
            "episode_return_max": float(np.max(window)) if window else None,
            "episode_length_mean": _mean(lengths), "episodes": int(finished.size),
            **{k: _finite(stats.get(k)) for k in ("policy_loss", "value_loss", "entropy", "loss", "grad_norm",
                                     "explained_variance", "learning_rate", "entropy_coef",
                                     "weights_version", "policy_lag")},
        }

    def _count_nonfinite(self, stats: dict[str, Any]) -> None:
        """Fail the job after `max_nonfinite_updates` updates in a row skipped for NaN/inf."""
        if stats["nonfinite_steps"]:
            self.sink.event("nonfinite", f"update at step {stats['step']}: skipped "
                            f"{stats['nonfinite_steps']} gradient step(s) with NaN/inf")
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if stats["skipped"] else 0
        if self.nonfinite_in_a_row >= self.spec.max_nonfinite_updates:
            raise TrainingFailed(f"{self.nonfinite_in_a_row} updates in a row had NaN/inf in "
                                 "observations, loss or gradients; the weights were kept finite")

    def _evaluate(self, weights, updates: int, spaces: SpacesSpec) -> float:
        """Mean return of the deterministic policy over eval_episodes fresh episodes (worker 0)."""
        seed = self.spec.seed + 1_000_003 * (updates + 1)
        while True:
            try:
                returns = self._get(self.workers[0].evaluate.remote(weights, self.spec.eval_episodes, seed),
                                    "evaluation", raw=True)
                return float(np.mean(returns))
            except ray.exceptions.RayActorError as exc:
                self._replace_worker(0, spaces, exc)

    def _checkpoint(self, learner, spaces: SpacesSpec) -> CheckpointInfo:
        """Write the learner's state as an archive (by the driver, wherever the learner runs)."""
        state = self._get(learner.state.remote(), "the learner's state")
        if not all(np.isfinite(t).all() for t in state.weights.tensors.values()):
            raise TrainingFailed(f"weights at step {state.step} are not finite; not checkpointed")
        ckpt_id = f"step-{state.step:010d}"
        path = self.out_dir / "checkpoints" / f"{ckpt_id}.tar.gz"
        mean = _mean(self.returns)
        write_archive(path, state, spaces, self.spec.env, self.spec.model_dump(mode="json"),
                      extra={"job_id": self.job_id, "return_mean": mean})
        info = CheckpointInfo(ckpt_id, path, state.step, mean, path.stat().st_size, time.time())
        self.last_checkpoint = info
        self.sink.checkpoint(info)
        return info
