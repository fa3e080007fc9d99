"""Evaluation of a policy on fresh envs: deterministic (its most likely actions), or sampled."""

from __future__ import annotations

from typing import Any

import numpy as np

from learner.acting import NumpyPolicy, TorchActing
from workers.env import make_vec_env


def evaluate_policy(policy: NumpyPolicy | TorchActing, env_id: str, env_kwargs: dict[str, Any],
                    episodes: int, seed: int, max_steps: int = 100_000, deterministic: bool = True) -> list[float]:
    """Returns of `episodes` episodes, one env each, played with the policy's most likely actions
    or, with `deterministic=False`, actions sampled from it (as rl-zoo evaluates Atari games;
    under gSDE each env draws its exploration matrix once, for its one episode, as a rollout does).

    Each env plays exactly one episode (later auto-resets are ignored); `max_steps` bounds
    envs without a time limit. Atari games are played whole, with raw rewards, under the
    preprocessing of training.
    """
    env = make_vec_env(env_id, episodes, env_kwargs, training=False)
    try:
        obs, _ = env.reset(seed=[seed + i for i in range(episodes)])
        totals = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        exploration = None if deterministic else policy.sample_exploration(episodes)
        for _ in range(max_steps):
            action, _, _ = policy.act(obs, deterministic=deterministic, exploration=exploration)
            obs, reward, terminated, truncated, _ = env.step(policy.clip_action(action))
            totals += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
            if not running.any():
                break
        return totals.tolist()
    finally:
        env.close()
