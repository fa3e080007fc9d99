"""The optimizer choice: Adam (the seed's) or RMSprop (SB3's A2C), and resuming with it."""

import copy

import numpy as np
import pytest
import torch

from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.spaces import SpacesSpec
from learner.rollout import Rollout

SPACES = SpacesSpec(obs_shape=(3,), action_type="box", action_shape=(2,), action_low=(-1.0, -1.0),
                    action_high=(1.0, 1.0))


def _rollout(seed: int, T: int = 8, N: int = 2) -> Rollout:
    rng = np.random.default_rng(seed)
    return Rollout(
        obs=rng.normal(size=(T, N, 3)).astype(np.float32),
        actions=rng.normal(size=(T, N, 2)).astype(np.float32),
        rewards=rng.normal(size=(T, N)).astype(np.float32), terminated=np.zeros((T, N), bool),
        truncated=np.zeros((T, N), bool), values=np.zeros((T, N), np.float32),
        log_probs=np.zeros((T, N), np.float32), final_values=np.zeros((T, N), np.float32),
        bootstrap_values=np.zeros(N, np.float32), episode_returns=np.zeros(0),
        episode_lengths=np.zeros(0, np.int64), weights_version=0)


def _learner(optimizer: str, restore=None, **a2c) -> Learner:
    config = A2CConfig(steps_per_batch=16, mini_batch_size=None, learning_rate=1e-3, optimizer=optimizer, **a2c)
    return Learner(SPACES, PolicyConfig(hidden_sizes=(8,)), config, 10_000, seed=0, restore=restore)


def _largest_move(learner: Learner) -> float:
    before = copy.deepcopy(learner.policy.state_dict())
    learner.update(_rollout(0))
    return max(float((learner.policy.state_dict()[k] - v).abs().max()) for k, v in before.items())


def test_default_optimizer_is_the_seeds_adam_with_eps_1e_5():
    learner = _learner("adam")
    assert type(learner.optimizer) is torch.optim.Adam
    assert learner.optimizer.param_groups[0]["eps"] == 1e-5


def test_first_step_sizes_tell_rmsprop_from_adam():
    # Adam's first step moves each parameter by about lr; RMSprop's, whose squared-gradient
    # average starts at (1 - alpha) g^2, by about lr / sqrt(1 - alpha): 10 lr for alpha 0.99.
    assert _largest_move(_learner("adam")) == pytest.approx(1e-3, rel=1e-2)
    assert _largest_move(_learner("rmsprop")) == pytest.approx(1e-2, rel=1e-2)
    assert _largest_move(_learner("rmsprop", rmsprop_alpha=0.9)) == pytest.approx(1e-3 / np.sqrt(0.1), rel=1e-2)
    rmsprop = _learner("rmsprop", optimizer_eps=1e-3)
    assert type(rmsprop.optimizer) is torch.optim.RMSprop
    assert rmsprop.optimizer.param_groups[0]["eps"] == 1e-3 and rmsprop.optimizer.param_groups[0]["alpha"] == 0.99


def test_resumed_rmsprop_learner_continues_exactly():
    learner = _learner("rmsprop")
    learner.update(_rollout(0))
    config = {"env": "X", "a2c": learner.config.model_dump(mode="json"),
              "policy": learner.policy.config.model_dump(mode="json")}
    state = read_archive(archive_bytes(learner.state(), SPACES, "X", config)).state
    resumed = _learner("rmsprop", restore=state)
    assert "square_avg" in next(iter(resumed.optimizer.state_dict()["state"].values()))
    learner.update(_rollout(1))
    resumed.update(_rollout(1))
    # Equal up to float rounding: the resumed learner shuffles the batch in another order. A
    # fresh RMSprop state would instead take a first step of about 10 lr (see above).
    torch.testing.assert_close(resumed.policy.state_dict(), learner.policy.state_dict())


def test_resuming_keeps_the_checkpoints_optimizer():
    from service.run.spec import InvalidSpec, build_spec
    from service.run.spec import check_resume
    from workers.env import describe_spaces
    spaces = describe_spaces("Pendulum-v1")
    learner = Learner(spaces, PolicyConfig(), A2CConfig(), 1000, 0)
    # A checkpoint written before the field existed: its config has no optimizer, so Adam.
    ckpt = read_archive(archive_bytes(learner.state(), spaces, "Pendulum-v1",
                                      {"env": "Pendulum-v1", "a2c": {"gamma": 0.9}}))
    assert ckpt.config["a2c"]["optimizer"] == "adam"
    spec = build_spec(ckpt.config)
    assert spec.a2c.optimizer == "adam"
    check_resume(spec, ckpt, spaces)
    resumed = Learner(spaces, spec.policy, spec.a2c, 1000, 0, restore=ckpt.state)
    assert type(resumed.optimizer) is torch.optim.Adam
    with pytest.raises(InvalidSpec) as err:
        check_resume(build_spec({**ckpt.config, "a2c": {**ckpt.config["a2c"], "optimizer": "rmsprop"}}),
                     ckpt, spaces)
    assert err.value.field == "a2c.optimizer" and "adam" in err.value.message
