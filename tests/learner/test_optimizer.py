"""The optimizers (learner/optim.py): each rule against torch.optim's or TensorFlow's, the choice
of Adam (the seed's), RMSprop (SB3's A2C) or TensorFlow's RMSprop (rl-zoo's Atari), and resuming."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.optim import Optimizer
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
    assert learner.optimizer.rule == "adam"
    assert learner.optimizer.param_groups[0]["eps"] == 1e-5


def test_first_step_sizes_tell_rmsprop_from_adam():
    # Adam's first step moves each parameter by about lr; RMSprop's, whose squared-gradient
    # average starts at (1 - alpha) g^2, by about lr / sqrt(1 - alpha): 10 lr for alpha 0.99.
    assert _largest_move(_learner("adam")) == pytest.approx(1e-3, rel=1e-2)
    assert _largest_move(_learner("rmsprop")) == pytest.approx(1e-2, rel=1e-2)
    assert _largest_move(_learner("rmsprop", rmsprop_alpha=0.9)) == pytest.approx(1e-3 / np.sqrt(0.1), rel=1e-2)
    rmsprop = _learner("rmsprop", optimizer_eps=1e-3)
    assert rmsprop.optimizer.rule == "rmsprop"
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
    assert resumed.optimizer.rule == "adam"
    with pytest.raises(InvalidSpec) as err:
        check_resume(build_spec({**ckpt.config, "a2c": {**ckpt.config["a2c"], "optimizer": "rmsprop"}}),
                     ckpt, spaces)
    assert err.value.field == "a2c.optimizer" and "adam" in err.value.message


def _params(seed: int) -> list[torch.nn.Parameter]:
    """A matrix, a vector and a scalar, as a policy has (weights, biases, a log-std)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((4, 3), (3,), ())]


def _set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("rule, reference", [
    ("adam", lambda ps: torch.optim.Adam(ps, lr=3e-2, eps=1e-5)),
    ("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=3e-2, alpha=0.9, eps=1e-5))])
def test_each_rule_steps_as_torch_optim_does_and_resumes_from_its_state(rule, reference):
    ours, theirs = _params(0), _params(0)
    opt, ref = Optimizer(ours, rule, lr=3e-2, eps=1e-5, alpha=0.9), reference(theirs)
    for step in range(6):
        if step == 3:  # the learner's schedule changes lr between updates
            opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 1e-2
        _set_grads(ours, step)
        _set_grads(theirs, step)
        opt.step()
        ref.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # A checkpoint written with torch.optim's optimizer (before this module) continues here.
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    resumed = Optimizer(resumed_params, rule, lr=0.5, eps=1e-5, alpha=0.9)
    resumed.load_state_dict(ref.state_dict())
    assert resumed.param_groups[0]["lr"] == 1e-2 and resumed.steps == [6, 6, 6]
    for step in range(6, 9):
        _set_grads(resumed_params, step)
        _set_grads(theirs, step)
        resumed.step()
        ref.step()
    for a, b in zip(resumed_params, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_rmsprop_tf_steps_follow_the_tensorflow_rule():
    # v starts at 1 and eps sits under the square root: p -= lr g / sqrt(v + eps).
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6))
    opt = Optimizer([p], "rmsprop_tf", lr=0.1, alpha=0.9, eps=1e-2)
    v, expected = torch.ones(6), p.detach().clone()
    for _ in range(3):
        g = torch.randn(6)
        p.grad = g.clone()
        opt.step()
        v = 0.9 * v + 0.1 * g * g
        expected -= 0.1 * g / torch.sqrt(v + 1e-2)
        torch.testing.assert_close(p.detach(), expected)


def test_rmsprop_tf_first_steps_are_small_for_small_gradients_unlike_torch_rmsprop():
    g = torch.full((3,), 1e-3)
    for rule, bound in (("rmsprop_tf", 1e-5), ("rmsprop", 5e-3)):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = Optimizer([p], rule, lr=7e-4, alpha=0.99, eps=1e-5)
        p.grad = g.clone()
        opt.step()
        moved = float(p.detach().abs().max())
        assert (moved < bound) if rule == "rmsprop_tf" else (moved > bound), (rule, moved)


def test_parameters_without_gradients_are_left_alone_and_zero_grad_drops_gradients():
    params = _params(1)
    before = [p.detach().clone() for p in params]
    opt = Optimizer(params, "adam", lr=0.1, eps=1e-5)
    opt.step()  # no gradients at all: not a step
    assert opt.steps == [0, 0, 0]
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert opt.steps == [1, 0, 0] and not torch.equal(params[0], before[0])
    assert torch.equal(params[1], before[1]) and torch.equal(params[2], before[2])
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_a_parameter_first_stepped_later_is_bias_corrected_from_its_own_first_step():
    # As torch.optim.Adam, which counts steps per parameter.
    ours, theirs = _params(2), _params(2)
    opt, ref = Optimizer(ours, "adam", lr=3e-2, eps=1e-5), torch.optim.Adam(theirs, lr=3e-2, eps=1e-5)
    for step in range(5):
        for params in (ours, theirs):
            _set_grads(params, step)
            if step < 2:
                params[1].grad = None  # the bias gets its first gradient at the third step
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert opt.steps == [5, 3, 5]
    resumed = Optimizer([torch.nn.Parameter(p.detach().clone()) for p in theirs], "adam", lr=3e-2, eps=1e-5)
    resumed.load_state_dict(ref.state_dict())
    assert resumed.steps == [5, 3, 5]


def test_a_state_for_another_policy_or_rule_is_refused_with_what_differs():
    opt = Optimizer(_params(0), "adam", lr=0.1, eps=1e-5)
    other = Optimizer(_params(0)[:2], "adam", lr=0.1, eps=1e-5)
    with pytest.raises(ValueError, match="1 group.*2.*this policy has one of 3"):
        opt.load_state_dict(other.state_dict())
    swapped = _params(0)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    state = Optimizer(swapped, "adam", lr=0.1, eps=1e-5).state_dict()
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 is \(3,\), the parameter \(4, 3\)"):
        opt.load_state_dict(state)
    momentum = torch.optim.RMSprop(_params(0), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"options \{'momentum': 0.9\} are not those of the rmsprop rule"):
        Optimizer(_params(0), "rmsprop", lr=0.1, eps=1e-5).load_state_dict(momentum.state_dict())


def test_rmsprop_tf_learner_resumes_from_its_checkpoint_with_its_state():
    spaces = SpacesSpec(obs_shape=(3,), action_type="discrete", action_n=2)
    config = A2CConfig(steps_per_batch=8, mini_batch_size=None, optimizer="rmsprop_tf")
    learner = Learner(spaces, PolicyConfig(hidden_sizes=(8,)), config, 1000, seed=0)
    assert learner.optimizer.rule == "rmsprop_tf"
    for p in learner.policy.parameters():
        p.grad = torch.full_like(p, 3.0)  # v = 0.99 + 0.01 * 9: unlike a fresh state's 1
    learner.optimizer.step()
    job = {"env": "CartPole-v1", "a2c": config.model_dump(mode="json"),
           "policy": PolicyConfig(hidden_sizes=(8,)).model_dump(mode="json")}
    checkpoint = read_archive(archive_bytes(learner.state(), spaces, "CartPole-v1", job))
    resumed = Learner(spaces, PolicyConfig(hidden_sizes=(8,)), config, 1000, seed=0, restore=checkpoint.state)
    for a, b in zip(learner.optimizer.state, resumed.optimizer.state):
        np.testing.assert_array_equal(a["square_avg"].numpy(), b["square_avg"].numpy())
    assert not np.allclose(resumed.optimizer.state[0]["square_avg"].numpy(), 1.0)  # not a fresh state


def test_a_learner_never_imports_torch_dynamo():
    # torch.optim imports torch._dynamo when an optimizer is built and at every step; the
    # learner's start waits on that import, which is why learner/optim.py exists.
    code = """
import sys
import numpy as np
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from tests.learner.test_optimizer import SPACES, _rollout
for rule in ("adam", "rmsprop", "rmsprop_tf"):
    learner = Learner(SPACES, PolicyConfig(hidden_sizes=(8,)), A2CConfig(steps_per_batch=16,
                      mini_batch_size=None, optimizer=rule), 10_000, seed=0)
    learner.update_and_weights(_rollout(0))
    learner.state()
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
