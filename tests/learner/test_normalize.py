"""Observation and reward normalisation: running statistics, their use, and their checkpointing."""

import dataclasses

import numpy as np
import torch

from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.normalize import RunningMeanStd
from learner.policy import ActorCritic
from learner.spaces import SpacesSpec
from learner.rollout import Rollout

SPACES = SpacesSpec(obs_shape=(3,), action_type="discrete", action_n=2)


def test_running_statistics_equal_those_of_all_batches_at_once():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=[5.0, -2.0, 0.0], scale=[3.0, 0.1, 1.0], size=(n, 3)) for n in (7, 100, 1, 33)]
    rms = RunningMeanStd((3,))
    for b in batches:
        rms.update(torch.as_tensor(b))
    joined = np.concatenate(batches)
    # The statistics start from a prior of 1e-4 samples at mean 0, variance 1 (as SB3's).
    n, prior = len(joined), 1e-4
    mean = n * joined.mean(0) / (n + prior)
    var = (prior + n * joined.var(0) + joined.mean(0) ** 2 * prior * n / (n + prior)) / (n + prior)
    np.testing.assert_allclose(rms.mean.numpy(), mean, rtol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), var, rtol=1e-9)
    assert rms.count.item() == n + prior
    out = rms(torch.as_tensor(joined, dtype=torch.float32))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(0, unbiased=False).numpy(), 1, atol=1e-3)


def test_outputs_are_clipped_and_scale_does_not_centre():
    rms = RunningMeanStd(())
    rms.update(torch.tensor([9.0, 11.0]))  # mean 10, var 1
    centred, clipped = rms(torch.tensor([10.0, 1000.0])).tolist()
    assert abs(centred) < 1e-3 and clipped == 10.0
    var = (1e-4 + 2 * 1.0 + 10.0**2 * 1e-4 * 2 / 2.0001) / 2.0001  # the batch merged with the prior
    expected = torch.tensor([2.0, -3.0]) / var**0.5
    torch.testing.assert_close(rms.scale(torch.tensor([2.0, -3.0])), expected, rtol=1e-6, atol=0)


def _rollout(obs, rewards, terminated=None, version=0):
    T, N = rewards.shape
    zeros = np.zeros((T, N), np.float32)
    return Rollout(obs=obs.astype(np.float32), actions=np.zeros((T, N), np.int64),
                   rewards=rewards.astype(np.float32),
                   terminated=np.zeros((T, N), bool) if terminated is None else terminated,
                   truncated=np.zeros((T, N), bool), values=zeros, log_probs=zeros, final_values=zeros,
                   bootstrap_values=np.zeros(N, np.float32), episode_returns=np.zeros(0),
                   episode_lengths=np.zeros(0, np.int64), weights_version=version)


def test_learner_updates_observation_statistics_and_workers_get_them_with_the_weights():
    learner = Learner(SPACES, PolicyConfig(normalize_observations=True),
                      A2CConfig(steps_per_batch=8, mini_batch_size=None), 1000, 0)
    obs = np.random.default_rng(1).normal(loc=100.0, scale=10.0, size=(4, 2, 3))
    stats = learner.update(_rollout(obs, np.ones((4, 2))))
    np.testing.assert_allclose(learner.policy.obs_norm.mean.numpy(), obs.reshape(8, 3).mean(0), rtol=1e-4)
    assert stats["weights_version"] == 1
    weights = learner.weights()
    assert {"obs_norm.mean", "obs_norm.var", "obs_norm.count"} <= weights.tensors.keys()
    worker_copy = ActorCritic(SPACES, PolicyConfig(normalize_observations=True))
    from learner.policy import load_numpy_state
    load_numpy_state(worker_copy, weights.tensors)
    x = torch.as_tensor(obs.reshape(8, 3), dtype=torch.float32)
    torch.testing.assert_close(worker_copy.value(x), learner.policy.value(x))


def test_nonfinite_observations_leave_the_statistics_alone():
    learner = Learner(SPACES, PolicyConfig(normalize_observations=True),
                      A2CConfig(steps_per_batch=8, mini_batch_size=None), 1000, 0)
    obs = np.ones((4, 2, 3))
    obs[1, 1, 2] = np.inf
    stats = learner.update(_rollout(obs, np.ones((4, 2))))
    assert stats["skipped"] and stats["weights_version"] == 0
    assert learner.policy.obs_norm.mean.tolist() == [0.0, 0.0, 0.0]


def test_rewards_are_divided_by_the_std_of_discounted_returns_that_restart_at_episode_ends():
    gamma = 0.5
    learner = Learner(SPACES, PolicyConfig(), A2CConfig(steps_per_batch=3, mini_batch_size=None,
                                                        gamma=gamma, normalize_rewards=True), 1000, 0)
    rewards = np.array([[1.0], [2.0], [4.0]])
    terminated = np.array([[False], [True], [False]])
    scaled = learner._normalized_rewards(rewards.astype(np.float32), terminated)
    returns = np.array([1.0, 2.0 + gamma * 1.0, 4.0])  # the episode ended after step 1
    var = returns.var() * 3 / (3 + 1e-4)  # the prior count of 1e-4 at mean 0, var 1 is negligible
    np.testing.assert_allclose(scaled.numpy()[:, 0], rewards[:, 0] / np.sqrt(var), rtol=1e-3)
    # The running return of the env carries into the next update: 4 then 4 * 0.5 + 1.
    learner._normalized_rewards(np.array([[1.0]], np.float32), np.array([[False]]))
    assert learner.discounted.tolist() == [3.0]


def test_checkpoint_keeps_both_statistics_and_gives_identical_actions():
    learner = Learner(SPACES, PolicyConfig(normalize_observations=True),
                      A2CConfig(steps_per_batch=8, mini_batch_size=None, normalize_rewards=True), 1000, 0)
    obs = np.random.default_rng(2).normal(loc=-50.0, scale=5.0, size=(4, 2, 3))
    learner.update(_rollout(obs, np.full((4, 2), -7.0)))
    config = {"env": "X", "policy": PolicyConfig(normalize_observations=True).model_dump(mode="json")}
    ckpt = read_archive(archive_bytes(learner.state(), SPACES, "X", config))
    assert ckpt.state.reward_norm == learner.state().reward_norm and ckpt.state.reward_norm[1] > 1
    x = torch.as_tensor(obs.reshape(8, 3), dtype=torch.float32)
    a1 = learner.policy.act(x, deterministic=True)
    a2 = ckpt.policy().act(x, deterministic=True)
    for u, v in zip(a1, a2):
        torch.testing.assert_close(u, v)
    resumed = Learner(SPACES, PolicyConfig(normalize_observations=True),
                      A2CConfig(steps_per_batch=8, mini_batch_size=None, normalize_rewards=True), 1000, 0,
                      restore=ckpt.state)
    assert resumed.state().reward_norm == ckpt.state.reward_norm
    np.testing.assert_array_equal(resumed.policy.obs_norm.mean.numpy(), learner.policy.obs_norm.mean.numpy())


def test_a_checkpoint_without_reward_statistics_still_loads():
    learner = Learner(SPACES, PolicyConfig(), A2CConfig(), 1000, 0)
    state = dataclasses.replace(learner.state(), reward_norm=None)
    assert read_archive(archive_bytes(state, SPACES, "X", {"env": "X"})).state.reward_norm is None


def test_an_older_checkpoint_config_is_completed_with_the_defaults_it_ran_with():
    learner = Learner(SPACES, PolicyConfig(), A2CConfig(), 1000, 0)
    old_config = {"env": "Pendulum-v1", "a2c": {"gamma": 0.9}, "policy": {"hidden_sizes": [64, 64]}}
    ckpt = read_archive(archive_bytes(learner.state(), SPACES, "X", old_config))
    assert ckpt.config["policy"]["normalize_observations"] is False
    assert ckpt.config["a2c"]["normalize_rewards"] is False and ckpt.config["a2c"]["gamma"] == 0.9
    # So resuming it fills nothing from the tuned table (Pendulum's turns normalisation on).
    from service.run.spec import build_spec
    spec = build_spec({**ckpt.config, "workers": 2, "envs_per_worker": 8})
    assert not spec.policy.normalize_observations and not spec.a2c.normalize_rewards
    assert not any(f.startswith(("a2c.", "policy.")) for f in spec.tuned)


def test_resuming_with_a_policy_the_weights_do_not_fit_names_the_policy_field():
    import pytest

    from service.run.spec import InvalidSpec, build_spec
    from service.run.spec import check_resume
    from workers.env import describe_spaces
    spaces = describe_spaces("CartPole-v1")
    learner = Learner(spaces, PolicyConfig(), A2CConfig(), 1000, 0)
    ckpt = read_archive(archive_bytes(learner.state(), spaces, "CartPole-v1", {"env": "CartPole-v1"}))
    spec = build_spec({"env": "CartPole-v1", "use_tuned": False, "policy": {"normalize_observations": True}})
    with pytest.raises(InvalidSpec) as err:
        check_resume(spec, ckpt, spaces)
    assert err.value.field == "policy" and "obs_norm" in err.value.message
    check_resume(build_spec({"env": "CartPole-v1", "use_tuned": False}), ckpt, spaces)  # fits


def test_statistics_out_of_range_are_refused_even_with_matching_checksums():
    import pytest

    from learner.checkpoint import CheckpointRejected
    learner = Learner(SPACES, PolicyConfig(normalize_observations=True),
                      A2CConfig(normalize_rewards=True), 1000, 0)
    config = {"env": "X", "policy": {"normalize_observations": True}}
    with torch.no_grad():
        learner.policy.obs_norm.var[0] = -1.0
    with pytest.raises(CheckpointRejected, match="obs_norm.var"):
        read_archive(archive_bytes(learner.state(), SPACES, "X", config))
    with torch.no_grad():
        learner.policy.obs_norm.var[0] = 1.0
    state = dataclasses.replace(learner.state(), reward_norm=(0.0, 1.0, 0.0))
    with pytest.raises(CheckpointRejected, match="reward_norm"):
        read_archive(archive_bytes(state, SPACES, "X", config))
