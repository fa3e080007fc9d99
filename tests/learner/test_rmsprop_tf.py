"""`optimizer: rmsprop_tf`: TensorFlow's RMSprop (rl-zoo's Atari optimizer), and resuming it."""

import numpy as np
import torch

from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner, RMSpropTF
from learner.spaces import SpacesSpec


def test_steps_follow_the_tensorflow_rule():
    # v starts at 1 and eps sits under the square root: p -= lr g / sqrt(v + eps).
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6))
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-2)
    v, expected = torch.ones(6), p.detach().clone()
    for _ in range(3):
        g = torch.randn(6)
        p.grad = g.clone()
        opt.step()
        v = 0.9 * v + 0.1 * g * g
        expected -= 0.1 * g / torch.sqrt(v + 1e-2)
        torch.testing.assert_close(p.detach(), expected)


def test_first_steps_are_small_for_small_gradients_unlike_torch_rmsprop():
    g = torch.full((3,), 1e-3)
    for cls, bound in ((RMSpropTF, 1e-5), (torch.optim.RMSprop, 5e-3)):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = cls([p], lr=7e-4, alpha=0.99, eps=1e-5)
        p.grad = g.clone()
        opt.step()
        moved = float(p.detach().abs().max())
        assert (moved < bound) if cls is RMSpropTF else (moved > bound), (cls, moved)


def test_rmsprop_tf_learner_resumes_from_its_checkpoint_with_its_state():
    spaces = SpacesSpec(obs_shape=(3,), action_type="discrete", action_n=2)
    config = A2CConfig(steps_per_batch=8, mini_batch_size=None, optimizer="rmsprop_tf")
    learner = Learner(spaces, PolicyConfig(hidden_sizes=(8,)), config, 1000, seed=0)
    assert isinstance(learner.optimizer, RMSpropTF)
    for p in learner.policy.parameters():
        p.grad = torch.ones_like(p)
    learner.optimizer.step()
    job = {"env": "CartPole-v1", "a2c": config.model_dump(mode="json"),
           "policy": PolicyConfig(hidden_sizes=(8,)).model_dump(mode="json")}
    checkpoint = read_archive(archive_bytes(learner.state(), spaces, "CartPole-v1", job))
    resumed = Learner(spaces, PolicyConfig(hidden_sizes=(8,)), config, 1000, seed=0, restore=checkpoint.state)
    for a, b in zip(learner.optimizer.state.values(), resumed.optimizer.state.values()):
        np.testing.assert_array_equal(a["square_avg"].numpy(), b["square_avg"].numpy())
