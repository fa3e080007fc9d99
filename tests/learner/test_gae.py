"""GAE against values computed by hand, with termination, truncation and rollout end together."""

import numpy as np
import pytest
import torch

from learner.gae import gae


def _t(x, dtype=torch.float32):
    return torch.tensor(np.asarray(x), dtype=dtype)


def test_terminated_truncated_and_rollout_end_in_one_array():
    # One env, T=5: steps 0-1 end with termination at t=1, steps 2-3 end with truncation at
    # t=3 (V(final obs) = 10), step 4 runs into the rollout end (V(s_T) = 4).
    gamma, lam = 0.9, 0.5
    rewards = _t([[1.0], [2.0], [3.0], [4.0], [5.0]])
    values = _t([[0.5], [1.0], [1.5], [2.0], [3.0]])
    terminated = _t([[0], [1], [0], [0], [0]], torch.bool)
    truncated = _t([[0], [0], [0], [1], [0]], torch.bool)
    final_values = _t([[0.0], [0.0], [0.0], [10.0], [0.0]])
    bootstrap = _t([4.0])
    adv, ret = gae(rewards, values, terminated, truncated, final_values, bootstrap, gamma, lam)

    # deltas by hand
    d4 = 5 + 0.9 * 4.0 - 3.0          # rollout end: bootstrap V(s_T)
    d3 = 4 + 0.9 * 10.0 - 2.0         # truncated: bootstrap V(final obs), not V(reset obs)=3.0
    d2 = 3 + 0.9 * 2.0 - 1.5
    d1 = 2 + 0.9 * 0.0 - 1.0          # terminated: bootstrap 0
    d0 = 1 + 0.9 * 1.0 - 0.5
    a4 = d4
    a3 = d3                           # trace cut at truncation
    a2 = d2 + 0.45 * a3
    a1 = d1                           # trace cut at termination
    a0 = d0 + 0.45 * a1
    expected = np.array([[a0], [a1], [a2], [a3], [a4]], dtype=np.float32)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(ret.numpy(), expected + values.numpy(), rtol=1e-6)


def test_envs_are_independent_columns():
    T, N = 6, 3
    g = torch.Generator().manual_seed(0)
    args = dict(rewards=torch.rand(T, N, generator=g), values=torch.rand(T, N, generator=g),
                terminated=torch.rand(T, N, generator=g) < 0.2, truncated=torch.rand(T, N, generator=g) < 0.2,
                final_values=torch.rand(T, N, generator=g), bootstrap_values=torch.rand(N, generator=g))
    adv, _ = gae(**args, gamma=0.99, lam=0.95)
    for n in range(N):
        col = {k: (v[:, n:n + 1] if v.dim() == 2 else v[n:n + 1]) for k, v in args.items()}
        adv_n, _ = gae(**col, gamma=0.99, lam=0.95)
        np.testing.assert_allclose(adv[:, n:n + 1].numpy(), adv_n.numpy(), rtol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_lambda_extremes_are_td0_and_monte_carlo(lam):
    gamma = 0.9
    rewards = _t([[1.0], [1.0], [1.0]])
    values = _t([[2.0], [3.0], [4.0]])
    no = _t([[0], [0], [0]], torch.bool)
    adv, ret = gae(rewards, values, no, no, torch.zeros(3, 1), _t([5.0]), gamma, lam)
    if lam == 0.0:
        expected_ret = [1 + 0.9 * 3.0, 1 + 0.9 * 4.0, 1 + 0.9 * 5.0]
    else:
        expected_ret = [1 + 0.9 + 0.81 + 0.729 * 5, 1 + 0.9 + 0.81 * 5, 1 + 0.9 * 5]
    np.testing.assert_allclose(ret.squeeze(1).numpy(), expected_ret, rtol=1e-6)


def test_truncated_episode_bootstraps_from_final_observation():
    # Infinite-horizon task under a time limit: reward 1 each step, V = 1/(1-gamma) everywhere.
    # With the true bootstrap, the target at the time limit stays 1/(1-gamma); treating the
    # truncation as termination would drop it to 1.
    gamma = 0.99
    v = 1 / (1 - gamma)
    T = 4
    values = torch.full((T, 1), v)
    truncated = _t([[0], [0], [0], [1]], torch.bool)
    terminated = torch.zeros(T, 1, dtype=torch.bool)
    final_values = torch.full((T, 1), v)
    _, ret = gae(torch.ones(T, 1), values, terminated, truncated, final_values, _t([v]), gamma, 0.95)
    np.testing.assert_allclose(ret.numpy(), np.full((T, 1), v), rtol=1e-5)
