"""Atari envs: the DeepMind preprocessing, and what the learner sees against what is reported
(a life per episode and clipped rewards for the learner, whole games with raw rewards in the
reported returns and in evaluation)."""

import numpy as np
import pytest
import torch

from learner.config import PolicyConfig
from learner.rollout import Weights
from learner.policy import ActorCritic, numpy_state
from workers.atari import PREPROCESSING, atari_settings
from workers.env import GAME_OVER, GAME_REWARD, describe_spaces, env_seeds, make_vec_env
from workers.worker import RolloutWorker

BREAKOUT = "BreakoutNoFrameskip-v4"
"""A game with lives (5) whose random play ends within a few hundred steps."""


@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "PongNoFrameskip-v4"])
def test_atari_ids_get_stacked_84x84_grayscale_uint8_frames(env_id):
    spaces = describe_spaces(env_id)
    assert spaces.obs_shape == (4, 84, 84) and spaces.obs_dtype == "uint8" and spaces.is_image
    assert spaces.action_type == "discrete" and spaces.action_n == 6
    env = make_vec_env(env_id, 2)
    obs, _ = env.reset(seed=[1, 2])
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    obs, reward, *_ = env.step(np.array([0, 1]))
    assert obs.dtype == np.uint8 and reward.dtype == np.float32
    env.close()


def test_sticky_actions_are_the_ids_own():
    assert atari_settings("ALE/Pong-v5")["repeat_action_probability"] == 0.25
    assert atari_settings("PongNoFrameskip-v4")["repeat_action_probability"] == 0.0
    assert atari_settings("PongNoFrameskip-v4", {"repeat_action_probability": 0.1})["repeat_action_probability"] == 0.1
    with pytest.raises(ValueError, match="frameskip"):
        atari_settings("PongNoFrameskip-v4", {"frameskip": 2})


def test_training_ends_an_episode_per_life_and_clips_rewards_of_the_same_game():
    # The same seed and actions play the same game in both views: the training view only adds
    # terminations at lost lives (the game goes on) and clips rewards to their sign.
    train, full = make_vec_env(BREAKOUT, 1, training=True), make_vec_env(BREAKOUT, 1, training=False)
    t_obs, _ = train.reset(seed=[5])
    f_obs, _ = full.reset(seed=[5])
    rng = np.random.default_rng(0)
    life_ends = games = 0
    for _ in range(2000):
        action = rng.integers(0, 4, 1)
        t_obs, t_rew, t_term, t_trunc, info = train.step(action)
        f_obs, f_rew, f_term, f_trunc, _ = full.step(action)
        np.testing.assert_array_equal(t_obs, f_obs)
        np.testing.assert_array_equal(info[GAME_REWARD], f_rew)
        np.testing.assert_array_equal(t_rew, np.sign(f_rew))
        np.testing.assert_array_equal(info[GAME_OVER], f_term | f_trunc)
        assert not (f_term & ~t_term).any()  # every game over is a termination for the learner
        life_ends += int((t_term & ~f_term).sum())
        games += int(f_term.sum())
        if games == 2:
            break
    assert games == 2 and life_ends == 2 * 4  # 5 lives: 4 lost lives, then the game over


def test_a_truncated_game_hands_over_its_final_frames_and_restarts():
    env = make_vec_env(BREAKOUT, 2, {"max_num_frames_per_episode": 200})  # 50 agent steps
    obs, _ = env.reset(seed=[1, 2])
    for t in range(50):
        last = obs
        obs, _, terminated, truncated, info = env.step(np.array([1, 1]))  # FIRE: the ball stays in play
    assert truncated.all() and not terminated.any() and info[GAME_OVER].all()
    final = info["final_obs"]
    for i in range(2):
        np.testing.assert_array_equal(final[i][:3], last[i][1:])  # the stack went on by one frame
        assert not np.array_equal(obs[i], final[i])  # the next observation is a new game's
    env.close()


def _atari_worker(n=2, T=64, seed=3):
    spaces = describe_spaces(BREAKOUT)
    worker = RolloutWorker(BREAKOUT, {}, n, T, spaces, PolicyConfig(), seed, 0)
    torch.manual_seed(0)
    return worker, Weights(1, numpy_state(ActorCritic(spaces, PolicyConfig())))


def test_worker_reports_whole_games_with_raw_rewards_while_the_learner_gets_lives():
    worker, weights = _atari_worker(n=2, T=64)
    rollouts, returns = [], []
    while len(returns) < 2:
        rollout, episodes = worker.sample(weights)
        rollouts.append(rollout)
        returns += episodes.returns.tolist()
    obs = np.concatenate([r.obs for r in rollouts])
    actions = np.concatenate([r.actions for r in rollouts])
    rewards = np.concatenate([r.rewards for r in rollouts])
    terminated = np.concatenate([r.terminated for r in rollouts])
    assert obs.dtype == np.uint8 and obs.shape[2:] == (4, 84, 84)
    assert set(np.unique(rewards)) <= {0.0, 1.0}  # Breakout's 1, 4 and 7 points clipped to 1
    # Replaying the recorded actions on full games from the same seeds gives the same frames,
    # and the worker's reported returns are those games' raw scores.
    full = make_vec_env(BREAKOUT, 2, training=False)
    f_obs, _ = full.reset(seed=env_seeds(3, 0, 3)[:2])
    scores, totals, game_overs = [], np.zeros(2), 0
    for t in range(len(actions)):
        np.testing.assert_array_equal(obs[t], f_obs)
        f_obs, reward, f_term, f_trunc, _ = full.step(actions[t])
        totals += reward
        for i in np.flatnonzero(f_term | f_trunc):
            scores.append(totals[i])
            totals[i] = 0
        game_overs += int((f_term | f_trunc).sum())
    assert sorted(scores) == sorted(returns)
    assert terminated.sum() > game_overs  # lost lives end the learner's episodes too


def test_worker_runs_one_batched_forward_per_step(monkeypatch):
    worker, weights = _atari_worker(n=4, T=8)
    calls = []
    act = worker.policy.act
    monkeypatch.setattr(worker.policy, "act", lambda obs, **kw: calls.append(obs.shape) or act(obs, **kw))
    worker.sample(weights)
    assert calls == [(4, 4, 84, 84)] * 8


def test_games_cut_by_the_frame_limit_get_bootstrap_values():
    spaces = describe_spaces(BREAKOUT)
    worker = RolloutWorker(BREAKOUT, {"max_num_frames_per_episode": 200}, 4, 64, spaces, PolicyConfig(), 3, 0)
    policy = ActorCritic(spaces, PolicyConfig())
    # Every state is worth 5, so that every bootstrap value is told from "none" (zero).
    torch.nn.init.zeros_(policy.value_head.weight)
    torch.nn.init.constant_(policy.value_head.bias, 5.0)
    rollout, _ = worker.sample(Weights(1, numpy_state(policy)))
    cut = rollout.truncated & ~rollout.terminated
    assert cut.any(axis=0).all()  # every game hit the limit (50 agent steps)
    assert (rollout.terminated & ~cut).any()  # and some lives were lost, which get no value
    assert np.all(rollout.final_values[cut] == 5) and np.all(rollout.final_values[~cut] == 0)


def test_games_on_two_threads_come_back_in_order_and_step_as_on_one_through_resets():
    # The worker's rollout columns are env indices: ale-py's threads must hand each step's
    # games back in env order, including steps where some games reset, and each game must
    # step as it would on one thread.
    from ale_py.vector_env import AtariVectorEnv

    settings = atari_settings(BREAKOUT, {"max_num_frames_per_episode": 100})
    game = settings.pop("game")
    envs = [AtariVectorEnv(game, 4, num_threads=threads, autoreset_mode="SameStep", **PREPROCESSING,
                           **settings) for threads in (1, 2)]
    first = [env.reset(seed=np.arange(4))[0] for env in envs]
    np.testing.assert_array_equal(*first)
    rng, ends = np.random.default_rng(0), 0
    for _ in range(120):
        actions = rng.integers(0, 4, 4)
        (obs1, r1, te1, tr1, _), (obs2, r2, te2, tr2, info) = (env.step(actions) for env in envs)
        np.testing.assert_array_equal(info["env_id"], np.arange(4))
        np.testing.assert_array_equal(obs1, obs2)
        assert (r1 == r2).all() and (te1 == te2).all() and (tr1 == tr2).all()
        ends += int((te2 | tr2).sum())
    assert ends >= 8
    for env in envs:
        env.close()
