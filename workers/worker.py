"""RolloutWorker: steps N envs for T steps with its CPU policy copy and returns a `Rollout`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from learner.acting import acting_policy
from learner.config import PolicyConfig
from learner.rollout import Rollout, Weights
from learner.spaces import SpacesSpec
from workers.env import GAME_OVER, GAME_REWARD, env_seeds, make_vec_env
from workers.evaluate import evaluate_policy


@dataclass(frozen=True)
class Episodes:
    """Finished episodes of one rollout, for the driver's metrics (small, unlike the rollout).

    Whole episodes with the env's own rewards, even where the learner sees other boundaries
    and rewards (an Atari game: an episode per life, clipped rewards)."""

    returns: np.ndarray  # (E,) float64
    lengths: np.ndarray  # (E,) int64
    weights_version: int


class RolloutWorker:
    """A plain class; `service/` wraps it with `ray.remote(num_cpus=1)`.

    It acts with `learner.acting.acting_policy`: for vector observations a numpy policy, so a
    worker process imports no torch; for images torch's ActorCritic (one thread), its
    convolutional torso in the job's `cnn_precision`."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int, steps_per_env: int,
                 spaces: SpacesSpec, policy_config: PolicyConfig, seed: int, worker_index: int,
                 cnn_precision: str = "float32") -> None:
        seeds = env_seeds(seed, worker_index, num_envs + 1)
        if spaces.is_image:
            import torch
            torch.set_num_threads(1)
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.env = make_vec_env(env_id, num_envs, env_kwargs)
        self.num_envs, self.steps_per_env = num_envs, steps_per_env
        self.spaces = spaces
        self.policy = acting_policy(spaces, policy_config, seeds[-1], cnn_precision)
        self.version = -1
        self.obs, _ = self.env.reset(seed=seeds[:num_envs])
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)

    def set_weights(self, weights: Weights) -> None:
        """Load a new weights version (a no-op if this version is already loaded)."""
        if weights.version != self.version:
            self.policy.load_weights(weights.tensors)
            self.version = weights.version

    def sample(self, weights: Weights) -> tuple[Rollout, Episodes]:
        """Collect T x N steps with `weights`; the env state carries over between calls."""
        self.set_weights(weights)
        T, N = self.steps_per_env, self.num_envs
        # uint8 images stay uint8 (the policy scales them); the rest float32, as the learner takes them.
        obs_buf = np.empty((T, N, *self.obs.shape[1:]), dtype=self.spaces.obs_dtype)
        actions = None
        rewards = np.empty((T, N), np.float32)
        terminated = np.empty((T, N), bool)
        truncated = np.empty((T, N), bool)
        values = np.empty((T, N), np.float32)
        log_probs = np.empty((T, N), np.float32)
        final_values = np.zeros((T, N), np.float32)
        ep_returns: list[float] = []
        ep_lengths: list[int] = []
        # gSDE: one noise matrix per env for this rollout (SB3's sde_sample_freq=-1).
        exploration = self.policy.sample_exploration(N)
        for t in range(T):
            obs_buf[t] = self.obs
            action, log_probs[t], values[t] = self.policy.act(obs_buf[t], exploration=exploration)
            if actions is None:
                actions = np.empty((T, *action.shape), action.dtype)
            actions[t] = action
            self.obs, reward, terminated[t], truncated[t], info = self.env.step(self.policy.clip_action(action))
            rewards[t] = reward
            # Reported episodes: whole games with raw rewards where the env says so (Atari).
            self.episode_return += info.get(GAME_REWARD, reward)
            self.episode_length += 1
            done = terminated[t] | truncated[t]
            if done.any():
                cut = truncated[t] & ~terminated[t]
                if cut.any():
                    final_values[t, cut] = self.policy.value(np.stack(info["final_obs"][cut]))
                ended = info.get(GAME_OVER, done)
                ep_returns += self.episode_return[ended].tolist()
                ep_lengths += self.episode_length[ended].tolist()
                self.episode_return[ended] = 0
                self.episode_length[ended] = 0
        bootstrap = self.policy.value(self.obs)
        episodes = Episodes(np.asarray(ep_returns, np.float64), np.asarray(ep_lengths, np.int64),
                            self.version)
        rollout = Rollout(obs_buf, actions, rewards, terminated, truncated, values, log_probs,
                          final_values, bootstrap, episodes.returns, episodes.lengths, self.version)
        return rollout, episodes

    def evaluate(self, weights: Weights, episodes: int, seed: int) -> list[float]:
        """Returns of `episodes` deterministic episodes on a fresh env, separate from training."""
        self.set_weights(weights)
        return evaluate_policy(self.policy, self.env_id, self.env_kwargs, episodes, seed)
