"""Generalized Advantage Estimation as a pure function over (T, N) arrays."""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor,
        truncated: torch.Tensor, final_values: torch.Tensor, bootstrap_values: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) advantages and value targets (Schulman et al. 2016, arXiv:1506.02438).

    Args (T steps, N envs):
        rewards, values: (T, N); values are V(s_t) at collection time.
        terminated, truncated: (T, N) bool; the episode ended after step t.
        final_values: (T, N); V(final observation) where truncated, ignored elsewhere.
        bootstrap_values: (N,); V(s_T) of the observation after the last step.

    The value after step t is:
        terminated  -> 0 (a true end: nothing follows);
        truncated   -> final_values[t] (a time limit: the episode would have gone on);
        rollout end -> bootstrap_values (t = T - 1 and the episode goes on);
        otherwise   -> values[t + 1].
    The advantage trace is cut at every episode end. lambda = 1 gives Monte Carlo returns,
    lambda = 0 gives TD(0).

    Returns: (advantages, returns), each (T, N), with returns = advantages + values.
    """
    T = rewards.shape[0]
    done = terminated | truncated
    next_values = torch.cat([values[1:], bootstrap_values.unsqueeze(0)], dim=0)
    next_values = torch.where(truncated, final_values, next_values)
    next_values = torch.where(terminated, torch.zeros_like(next_values), next_values)
    deltas = rewards + gamma * next_values - values
    carry = (~done).to(values.dtype) * (gamma * lam)
    advantages = torch.empty_like(values)
    running = torch.zeros_like(bootstrap_values)
    for t in range(T - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages, advantages + values
