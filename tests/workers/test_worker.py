"""RolloutWorker without Ray: shapes, dtypes, seeding and the auto-reset bookkeeping."""

import numpy as np
import pytest
import torch

from learner.config import PolicyConfig
from learner.rollout import Weights
from learner.policy import ActorCritic, numpy_state
from workers.env import describe_spaces, env_seeds
from workers.worker import RolloutWorker


def _worker(env="CartPole-v1", n=4, T=64, seed=0, index=0):
    spaces = describe_spaces(env)
    worker = RolloutWorker(env, {}, n, T, spaces, PolicyConfig(), seed, index)
    torch.manual_seed(123)
    weights = Weights(7, numpy_state(ActorCritic(spaces, PolicyConfig())))
    return worker, weights


def test_cartpole_rollout_shapes_and_dtypes():
    worker, weights = _worker(n=4, T=64)
    rollout, episodes = worker.sample(weights)
    T, N = 64, 4
    assert rollout.obs.shape == (T, N, 4) and rollout.obs.dtype == np.float32
    assert rollout.actions.shape == (T, N) and rollout.actions.dtype == np.int64
    for name in ("rewards", "values", "log_probs", "final_values"):
        arr = getattr(rollout, name)
        assert arr.shape == (T, N) and arr.dtype == np.float32, name
    assert rollout.terminated.dtype == bool and rollout.truncated.shape == (T, N)
    assert rollout.bootstrap_values.shape == (N,)
    assert rollout.weights_version == 7 == episodes.weights_version
    assert all(getattr(rollout, f).flags["C_CONTIGUOUS"] for f in ("obs", "actions", "rewards"))
    # A random CartPole policy ends episodes within 64 steps; every reward of a step is 1.
    assert episodes.returns.size > 0 and np.all(rollout.rewards == 1.0)
    assert np.array_equal(episodes.returns, episodes.lengths.astype(float))
    # Log-probs are per sample (B,), not broadcast (B, B): each is log(p) of a 2-way choice.
    assert np.all(rollout.log_probs <= 0) and np.all(rollout.log_probs > np.log(1e-3))


def test_pendulum_rollout_has_box_actions_and_time_limit_bootstraps():
    worker, weights = _worker(env="Pendulum-v1", n=2, T=250)
    rollout, episodes = worker.sample(weights)
    assert rollout.actions.shape == (250, 2, 1) and rollout.actions.dtype == np.float32
    # Pendulum never terminates; its 200-step time limit truncates, bootstrapped from V(final).
    assert not rollout.terminated.any()
    assert rollout.truncated[199].all() and rollout.truncated.sum() == 2
    assert np.all(rollout.final_values[199] != 0) and np.all(np.delete(rollout.final_values, 199, 0) == 0)
    assert episodes.lengths.tolist() == [200, 200]


def test_no_fake_transition_after_an_episode_ends():
    # With same-step auto-reset the obs after an ended step is a fresh reset observation, and
    # the following step is a real step from it (reward 1, not a 0-reward reset step).
    worker, weights = _worker(n=3, T=200)
    rollout, _ = worker.sample(weights)
    ended = np.argwhere(rollout.terminated[:-1])
    assert len(ended) > 0
    for t, n in ended:
        assert np.all(np.abs(rollout.obs[t + 1, n]) <= 0.05)  # CartPole resets into [-0.05, 0.05]
        assert rollout.rewards[t + 1, n] == 1.0


def test_same_seed_same_rollout_and_distinct_env_seeds():
    a, w = _worker(seed=3, index=1)
    b, _ = _worker(seed=3, index=1)
    ra, rb = a.sample(w)[0], b.sample(w)[0]
    np.testing.assert_array_equal(ra.obs, rb.obs)
    np.testing.assert_array_equal(ra.actions, rb.actions)
    assert len(set(env_seeds(3, 0, 8)) | set(env_seeds(3, 1, 8))) == 16


def test_env_state_carries_over_between_samples():
    worker, weights = _worker(n=2, T=5)
    first, _ = worker.sample(weights)
    second, _ = worker.sample(weights)
    assert not np.array_equal(first.obs[0], second.obs[0])


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_evaluate_runs_each_env_for_one_episode(env_id):
    worker, weights = _worker(env=env_id, n=2, T=4)
    returns = worker.evaluate(weights, episodes=3, seed=5)
    assert len(returns) == 3 and all(np.isfinite(returns))


def test_stochastic_evaluation_samples_actions_reproducibly_from_the_policys_seed():
    from learner.acting import acting_policy
    from workers.evaluate import evaluate_policy
    spaces = describe_spaces("CartPole-v1")
    torch.manual_seed(123)
    state = numpy_state(ActorCritic(spaces, PolicyConfig()))

    def play(deterministic, policy_seed):
        policy = acting_policy(spaces, PolicyConfig(), policy_seed)
        policy.load_weights(state)
        return evaluate_policy(policy, "CartPole-v1", {}, 6, seed=5, deterministic=deterministic)

    sampled = play(False, 1)
    assert play(False, 1) == sampled and play(False, 2) != sampled
    most_likely = play(True, 1)  # no draw: the policy's seed does not matter
    assert play(True, 2) == most_likely != sampled


def test_stochastic_evaluation_and_video_of_a_gsde_policy_draw_its_exploration_matrices(tmp_path):
    from learner.acting import acting_policy
    from workers.evaluate import evaluate_policy
    from workers.video import record_episodes
    spaces, config = describe_spaces("Pendulum-v1"), PolicyConfig(use_sde=True, log_std_init=0.0)
    torch.manual_seed(123)
    state = numpy_state(ActorCritic(spaces, config))

    def policy(seed):
        acting = acting_policy(spaces, config, seed)
        acting.load_weights(state)
        return acting

    sampled = evaluate_policy(policy(1), "Pendulum-v1", {}, 2, seed=5, deterministic=False)
    assert sampled == evaluate_policy(policy(1), "Pendulum-v1", {}, 2, seed=5, deterministic=False)
    assert sampled != evaluate_policy(policy(1), "Pendulum-v1", {}, 2, seed=5)
    pytest.importorskip("imageio_ffmpeg")
    (video,) = record_episodes(policy(1), "Pendulum-v1", {}, 1, 5, tmp_path, max_steps=20, deterministic=False)
    assert video.frames == 21


def test_gsde_noise_is_one_linear_map_of_the_features_per_env_and_rollout():
    spaces = describe_spaces("Pendulum-v1")
    config = PolicyConfig(hidden_sizes=(4,), use_sde=True, log_std_init=-1.0)
    worker = RolloutWorker("Pendulum-v1", {}, 2, 16, spaces, config, 0, 0)
    torch.manual_seed(5)
    policy = ActorCritic(spaces, config)  # the learner's: the worker acts with a numpy copy
    weights = Weights(1, numpy_state(policy))
    maps = []
    for _ in range(2):
        rollout, _ = worker.sample(weights)
        with torch.no_grad():
            obs = torch.from_numpy(rollout.obs.reshape(-1, 3))
            latent, mean, _ = policy._forward(obs)
        noise = (torch.from_numpy(rollout.actions.reshape(-1, 1)) - mean).reshape(16, 2, 1)
        latent = latent.reshape(16, 2, 4)
        for env in range(2):  # 16 steps, 4 features: the noise fits one 4x1 map exactly
            solution = torch.linalg.lstsq(latent[:, env].double(), noise[:, env].double())
            assert (latent[:, env].double() @ solution.solution - noise[:, env]).abs().max() < 1e-4
            maps.append(solution.solution)
    assert not torch.allclose(maps[0], maps[1])  # each env has its own noise map...
    assert not torch.allclose(maps[0], maps[2])  # ...and the next rollout draws new ones
