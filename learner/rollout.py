"""The types that cross between the actors, numpy and bytes only, free of torch: `Rollout` from
rollout workers to the learner, `Weights` back, and `LearnerState` from the learner to the
driver and its checkpoint archives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rollout:
    """T steps of N envs as contiguous numpy arrays (T steps first, then N envs).

    A step's `rewards`, `terminated`, `truncated` follow from taking `actions` in `obs`.
    `final_values[t, n]` is V(final observation) where `truncated[t, n]` (0 elsewhere): the
    bootstrap for a time-limited episode, whose next `obs` is already the reset observation.
    """

    obs: np.ndarray            # (T, N, *obs_shape) float32, or uint8 images (SpacesSpec.obs_dtype)
    actions: np.ndarray        # (T, N) int64 for Discrete, (T, N, A) float32 for Box (unclipped)
    rewards: np.ndarray        # (T, N) float32, as the learner trains on them (Atari's: clipped)
    terminated: np.ndarray     # (T, N) bool
    truncated: np.ndarray      # (T, N) bool
    values: np.ndarray         # (T, N) float32, V(obs) at collection time
    log_probs: np.ndarray      # (T, N) float32, log pi(action | obs) at collection time
    final_values: np.ndarray   # (T, N) float32
    bootstrap_values: np.ndarray  # (N,) float32, V(s_T) of the observation after the last step
    episode_returns: np.ndarray   # (E,) float64, episodes that finished during this rollout (whole
                                  # games with raw rewards, as `workers.worker.Episodes`)
    episode_lengths: np.ndarray   # (E,) int64
    weights_version: int          # version of the weights the actions were sampled with

    @property
    def num_steps(self) -> int:
        """Env steps in this rollout: T x N."""
        return int(self.rewards.size)


@dataclass(frozen=True)
class Weights:
    """One version of the policy weights, as numpy arrays; put in the object store once."""

    version: int
    tensors: dict[str, np.ndarray]


@dataclass(frozen=True)
class LearnerState:
    """Everything a resumed learner needs: weights, optimizer state, progress counters."""

    weights: Weights
    optimizer: bytes
    """`torch.save` of the optimizer state dict; read back with weights_only=True."""
    step: int
    """Env steps trained on so far; schedules continue from here."""
    updates: int
    reward_norm: tuple[float, float, float] | None = None
    """(mean, var, count) of the discounted-return statistics when `normalize_rewards` is on."""
