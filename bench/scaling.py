"""Scaling figures of this project: env steps/s over workers x envs per worker (CLI runs), and
the learner's update time against batch size (in-process, on synthetic rollouts).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.ours import run_ours

STEPS_PER_ENV = 16
"""T of every grid point: the batch is workers x envs x 16 (2 x 8 x 16 = 256, the tuned batch)."""


def grid_point(workers: int, envs: int, budget_s: float, mode: str = "sync",
               log_dir: Path | None = None, sps_guess: float = 20_000) -> dict[str, Any]:
    """One CLI run of CartPole-v1 with W workers x N envs for about `budget_s` of loop time."""
    batch = workers * envs * STEPS_PER_ENV
    steps = max(batch * 10, int(sps_guess * budget_s) // batch * batch)
    record = run_ours("CartPole-v1", steps, 0, workers, envs,
                      extra=["--steps-per-batch", str(batch), "--mode", mode],
                      timeout_s=budget_s * 6 + 120, log_dir=log_dir)
    return {"workers": workers, "envs_per_worker": envs, "mode": mode, "batch": batch,
            "steps": record.steps, "env_steps_per_s": record.summary(None)["env_steps_per_s"],
            "loop_wall_s": round(record.loop_wall_s, 2), "startup_s": round(record.startup_s, 2),
            "peak_rss_mb": round(record.peak_rss_mb or 0), "load_before": record.load_before,
            "error": record.error}


def synthetic_rollout(T: int, N: int, obs_dim: int = 4, n_actions: int = 2, seed: int = 0):
    """A CartPole-shaped `Rollout` of random data (T steps x N envs), episodes ending at ~1/50."""
    from learner.rollout import Rollout
    rng = np.random.default_rng(seed)
    done = rng.random((T, N)) < 0.02
    return Rollout(
        obs=rng.standard_normal((T, N, obs_dim)).astype(np.float32),
        actions=rng.integers(0, n_actions, (T, N)).astype(np.int64),
        rewards=np.ones((T, N), np.float32), terminated=done, truncated=np.zeros((T, N), bool),
        values=rng.standard_normal((T, N)).astype(np.float32),
        log_probs=np.full((T, N), -0.69, np.float32), final_values=np.zeros((T, N), np.float32),
        bootstrap_values=rng.standard_normal(N).astype(np.float32),
        episode_returns=np.zeros(0), episode_lengths=np.zeros(0, np.int64), weights_version=0)


def learner_update_times(batches: list[int], reps: int = 7, T: int = STEPS_PER_ENV,
                         mini_batch_size: int | None = None) -> list[dict[str, Any]]:
    """Median wall time of `Learner.update` (GAE + loss + Adam step) per batch size, and of
    `Learner.weights()` (the export that is put in the object store), with torch's 1 thread.

    Two rollouts per update, as from 2 workers; CartPole's spaces and the tuned policy.
    """
    from learner.config import A2CConfig, PolicyConfig
    from learner.learner import Learner
    from learner.spaces import SpacesSpec

    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    out = []
    for batch in batches:
        n = max(1, batch // (2 * T))
        rollouts = (synthetic_rollout(T, n, seed=1), synthetic_rollout(T, n, seed=2))
        config = A2CConfig(steps_per_batch=2 * T * n, mini_batch_size=mini_batch_size,
                           learning_rate=1e-3, gae_lambda=1.0)
        learner = Learner(spaces, PolicyConfig(share_torso=False), config, 10**9, 0, "cpu")
        learner.update(*rollouts)  # warm-up: first-call allocations
        times, wtimes = [], []
        for _ in range(reps):
            t = time.perf_counter()
            learner.update(*rollouts)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            learner.weights()
            wtimes.append(time.perf_counter() - t)
        median = statistics.median(times)
        out.append({"batch": 2 * T * n, "mini_batch_size": mini_batch_size,
                    "update_ms": round(median * 1e3, 2),
                    "update_us_per_sample": round(median * 1e6 / (2 * T * n), 2),
                    "weights_export_ms": round(statistics.median(wtimes) * 1e3, 3)})
    return out
