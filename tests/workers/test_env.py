"""The batched CartPole adapter: same physics as gymnasium's CartPoleEnv, SAME_STEP auto-reset."""

import gymnasium as gym
import numpy as np

from workers.env import SameStepCartPoleVectorEnv, make_vec_env


def test_cartpole_uses_the_batched_env_and_other_envs_a_sync_vector_env():
    assert isinstance(make_vec_env("CartPole-v1", 4), SameStepCartPoleVectorEnv)
    assert make_vec_env("CartPole-v0", 2).max_episode_steps == 200  # the id's own time limit
    assert isinstance(make_vec_env("Acrobot-v1", 2), gym.vector.SyncVectorEnv)


def test_cartpole_env_kwargs_work_on_either_path():
    limited = make_vec_env("CartPole-v1", 2, {"max_episode_steps": 50})
    assert isinstance(limited, SameStepCartPoleVectorEnv) and limited.max_episode_steps == 50
    # Kwargs the batched env does not take go to gymnasium.make, on single envs.
    unchecked = make_vec_env("CartPole-v1", 2, {"disable_env_checker": True})
    assert isinstance(unchecked, gym.vector.SyncVectorEnv)


def test_batched_cartpole_matches_single_envs_step_for_step_through_an_episode_end():
    n = 3
    env = make_vec_env("CartPole-v1", n)
    obs, _ = env.reset(seed=[7, 8, 9])
    singles = []
    for i in range(n):  # single envs started in the same state as each batched column
        single = gym.make("CartPole-v1").unwrapped
        single.reset(seed=0)
        single.state = env.state[:, i].copy()
        singles.append(single)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(300):
        actions = rng.integers(0, 2, n)
        obs, reward, terminated, truncated, info = env.step(actions)
        for i, single in enumerate(singles):
            s_obs, s_reward, s_term, _, _ = single.step(int(actions[i]))
            assert s_reward == reward[i] == 1.0  # the ending step pays its reward; no 0-reward step
            assert s_term == terminated[i]
            if terminated[i]:
                ended += 1
                np.testing.assert_allclose(info["final_obs"][i], s_obs, rtol=1e-6)
                assert np.all(np.abs(obs[i]) <= 0.05)  # reset in the same step
                single.state, single.steps_beyond_terminated = env.state[:, i].copy(), None
            else:
                np.testing.assert_allclose(obs[i], s_obs, rtol=1e-6)
                assert "final_obs" not in info or info["final_obs"][i] is None
    assert ended > 5


def test_batched_cartpole_truncates_at_the_time_limit_and_hands_over_the_final_obs():
    env = make_vec_env("CartPole-v1", 2, {})
    env.max_episode_steps = 5
    env.reset(seed=0)
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([0, 1]))
    assert truncated.all() and not terminated.any() and reward.tolist() == [1.0, 1.0]
    assert all(f.shape == (4,) for f in info["final_obs"])
    assert env.steps.tolist() == [0, 0]
    _, reward, _, truncated, _ = env.step(np.array([0, 1]))
    assert not truncated.any() and reward.tolist() == [1.0, 1.0]


def test_batched_cartpole_is_reproducible_from_its_seed():
    a, b = make_vec_env("CartPole-v1", 4), make_vec_env("CartPole-v1", 4)
    oa, _ = a.reset(seed=[3, 4, 5, 6])
    ob, _ = b.reset(seed=[3, 4, 5, 6])
    for _ in range(100):
        np.testing.assert_array_equal(oa, ob)
        oa, *_ = a.step(np.array([0, 1, 0, 1]))
        ob, *_ = b.step(np.array([0, 1, 0, 1]))
