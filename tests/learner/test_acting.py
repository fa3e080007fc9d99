"""learner/acting.py: the numpy policy workers act with against torch's ActorCritic, whose
`evaluate_actions` trains on what the workers sampled."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from learner.acting import NumpyPolicy, TorchActing, acting_policy
from learner.config import PolicyConfig
from learner.policy import ActorCritic, numpy_state, shape_of
from learner.spaces import SpacesSpec

DISCRETE = SpacesSpec(obs_shape=(5,), action_type="discrete", action_n=3)
BOX = SpacesSpec(obs_shape=(2, 3), action_type="box", action_shape=(2,), action_low=(-1.0, -2.0),
                 action_high=(1.0, 2.0))
CASES = {
    "discrete tanh shared": (DISCRETE, PolicyConfig(hidden_sizes=(16, 8))),
    "discrete relu own value torso, normalised obs": (
        DISCRETE, PolicyConfig(hidden_sizes=(16,), activation="relu", share_torso=False,
                               normalize_observations=True)),
    "box": (BOX, PolicyConfig(hidden_sizes=(16, 16), log_std_init=-0.5, normalize_observations=True)),
    "box gSDE": (BOX, PolicyConfig(hidden_sizes=(8,), use_sde=True, log_std_init=-1.0, share_torso=False)),
}


def _pair(case: str, seed: int = 0) -> tuple[ActorCritic, NumpyPolicy]:
    """A torch policy with weights far from their init (large logits, uneven std, observation
    statistics away from 0 and 1), and a NumpyPolicy loaded with the same weights."""
    spaces, config = CASES[case]
    torch.manual_seed(seed)
    policy = ActorCritic(spaces, config)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        if policy.obs_norm is not None:
            policy.obs_norm.mean.copy_(torch.randn(spaces.obs_dim, dtype=torch.float64))
            policy.obs_norm.var.copy_(torch.rand(spaces.obs_dim, dtype=torch.float64) * 4 + 0.1)
    acting = NumpyPolicy(spaces, config, seed=1)
    acting.load_weights(numpy_state(policy))
    return policy, acting


def _obs(case: str, n: int = 64) -> np.ndarray:
    spaces = CASES[case][0]
    return np.random.default_rng(2).normal(scale=3.0, size=(n, *spaces.obs_shape)).astype(np.float32)


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_deterministic_actions_are_torchs(case):
    policy, acting = _pair(case)
    obs = _obs(case)
    action, log_prob, value = acting.act(obs, deterministic=True)
    t_action, t_log_prob, t_value = policy.act(torch.from_numpy(obs), deterministic=True)
    assert action.dtype == t_action.numpy().dtype and action.shape == tuple(t_action.shape)
    assert log_prob.dtype == np.float32 and value.dtype == np.float32 and value.shape == (64,)
    np.testing.assert_allclose(action, t_action.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(log_prob, t_log_prob.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(value, t_value.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(acting.value(obs), policy.value(torch.from_numpy(obs)).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_actions_carry_the_log_probs_the_learner_computes(case):
    policy, acting = _pair(case)
    obs = _obs(case)
    exploration = acting.sample_exploration(len(obs))
    assert (exploration is None) == (policy.sample_exploration(1) is None) == (not CASES[case][1].use_sde)
    action, log_prob, _ = acting.act(obs, exploration=exploration)
    _, t_log_prob, _ = policy.evaluate_actions(torch.from_numpy(obs), torch.from_numpy(action))
    np.testing.assert_allclose(log_prob, t_log_prob.detach().numpy(), rtol=1e-4, atol=1e-3)
    deterministic = acting.act(obs, deterministic=True)[0]
    assert not np.array_equal(action, deterministic)  # they were sampled


def test_discrete_samples_follow_the_softmax():
    policy, acting = _pair("discrete tanh shared")
    obs = np.repeat(_obs("discrete tanh shared", 1), 40_000, axis=0)
    action, _, _ = acting.act(obs)
    probs = torch.softmax(policy._forward(torch.from_numpy(obs[:1]))[1], -1)[0].detach().numpy()
    assert probs.min() > 0.02  # every action is likely enough to be counted
    np.testing.assert_allclose(np.bincount(action, minlength=3) / len(obs), probs, atol=0.01)


def test_gaussian_samples_have_the_heads_mean_and_std():
    policy, acting = _pair("box")
    obs = np.repeat(_obs("box", 1), 40_000, axis=0)
    action, _, _ = acting.act(obs)
    _, mean, _ = policy._forward(torch.from_numpy(obs[:1]))
    np.testing.assert_allclose(action.mean(0), mean[0].detach().numpy(), atol=0.02)
    np.testing.assert_allclose(action.std(0), policy.log_std.exp().detach().numpy(), rtol=0.02)


def test_gsde_noise_is_the_features_times_each_envs_matrix():
    policy, acting = _pair("box gSDE")
    obs = _obs("box gSDE", 4)
    exploration = acting.sample_exploration(4)
    assert exploration.shape == (4, 8, 2) and exploration.dtype == np.float32
    action, _, _ = acting.act(obs, exploration=exploration)
    latent, mean, _ = policy._forward(torch.from_numpy(obs))
    expected = mean.detach().numpy() + np.einsum("bh,bha->ba", latent.detach().numpy(), exploration)
    np.testing.assert_allclose(action, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="exploration matrices"):
        acting.act(obs)


def test_same_seed_same_draws_and_weights_must_be_loaded_first():
    spaces, config = CASES["discrete tanh shared"]
    a, b = NumpyPolicy(spaces, config, seed=4), NumpyPolicy(spaces, config, seed=4)
    with pytest.raises(RuntimeError, match="load"):
        a.act(_obs("discrete tanh shared"))
    weights = numpy_state(ActorCritic(spaces, config))
    a.load_weights(weights)
    b.load_weights(weights)
    obs = _obs("discrete tanh shared")
    assert np.array_equal(a.act(obs)[0], b.act(obs)[0])


@pytest.mark.parametrize("case", list(CASES))
def test_the_state_dict_it_expects_is_actor_critics(case):
    spaces, config = CASES[case]
    assert NumpyPolicy(spaces, config, seed=0).expected_shapes() == shape_of(spaces, config)


def test_weights_of_another_policy_are_refused_by_name_and_shape():
    spaces, config = CASES["discrete tanh shared"]
    acting = NumpyPolicy(spaces, config, seed=0)
    weights = numpy_state(ActorCritic(spaces, config))
    with pytest.raises(ValueError, match=r"missing \['action_head.bias'\]"):
        acting.load_weights({k: v for k, v in weights.items() if k != "action_head.bias"})
    with pytest.raises(ValueError, match=r"unexpected \['log_std'\]"):
        acting.load_weights({**weights, "log_std": np.zeros(3, np.float32)})
    wider = numpy_state(ActorCritic(spaces, PolicyConfig(hidden_sizes=(16, 9))))
    with pytest.raises(ValueError, match=r"wrong shapes .*torso.2.weight"):
        acting.load_weights(wider)


def test_images_act_with_torch_and_vectors_with_numpy():
    image = SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete", action_n=6)
    acting = acting_policy(image, PolicyConfig(), seed=0)
    assert isinstance(acting, TorchActing)
    acting.load_weights(numpy_state(acting.policy))
    obs = np.random.default_rng(0).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    action, log_prob, value = acting.act(obs)
    assert action.shape == (2,) and log_prob.shape == (2,) and value.shape == (2,)
    assert isinstance(acting_policy(DISCRETE, PolicyConfig(), seed=0), NumpyPolicy)
    with pytest.raises(ValueError, match="policy.use_sde"):
        NumpyPolicy(DISCRETE, PolicyConfig(use_sde=True), seed=0)


def test_weights_load_from_read_only_arrays_into_the_policys_own_tensors():
    """A worker's weights are read-only views of Ray's object store: they are copied into the
    policy's own tensors (a later change to the arrays does not reach it)."""
    image = SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete", action_n=6)
    weights = {k: v.copy() for k, v in numpy_state(ActorCritic(image, PolicyConfig())).items()}
    for array in weights.values():
        array.setflags(write=False)
    acting = acting_policy(image, PolicyConfig(), seed=0, cnn_precision="bfloat16")
    acting.load_weights(weights)
    loaded = acting.policy.state_dict()
    assert loaded["torso.0.weight"].dtype == torch.bfloat16  # converted as it was copied in
    np.testing.assert_array_equal(loaded["action_head.weight"].numpy(), weights["action_head.weight"])
    before = loaded["action_head.weight"].clone()
    weights["action_head.weight"].setflags(write=True)
    weights["action_head.weight"][:] = 7.0
    assert torch.equal(acting.policy.state_dict()["action_head.weight"], before)


def test_read_only_weights_and_observations_load_without_a_warning():
    # In a fresh process: torch warns about a read-only array once per process, so a test in
    # pytest's process could pass only because an earlier one had used that warning up.
    code = """
import numpy as np
from learner.acting import acting_policy
from learner.config import PolicyConfig
from learner.policy import ActorCritic, numpy_state, obs_tensor
from learner.spaces import SpacesSpec
image = SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete", action_n=6)
weights = numpy_state(ActorCritic(image, PolicyConfig()))
for array in weights.values():
    array.setflags(write=False)
acting_policy(image, PolicyConfig(), seed=0, cnn_precision="bfloat16").load_weights(weights)
obs = np.zeros((2, 4, 84, 84), np.uint8)
obs.setflags(write=False)
obs_tensor(obs, image)
print("loaded")
"""
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "loaded\n" and out.stderr == "", out.stderr


def test_a_cartpole_worker_never_imports_torch_cold_or_warm():
    # The point of the numpy policy: a worker's process start does not pay torch's import. A
    # Ray actor's process imports its class's module: workers.worker, or service.run.warm.
    code = """
import sys
import numpy as np
from learner.config import PolicyConfig
from learner.rollout import Weights
from service.run.warm import WarmRolloutWorker
from workers.env import describe_spaces
from workers.worker import RolloutWorker
spaces = describe_spaces("CartPole-v1")
weights = Weights(0, np.load(sys.argv[1]))
args = ("CartPole-v1", {}, 4, 32, spaces, PolicyConfig(), 0, 0)
warm = WarmRolloutWorker()
warm.configure(*args)
for worker in (RolloutWorker(*args), warm):
    worker.sample(weights)
    worker.evaluate(weights, 2, 0)
print("torch" in sys.modules)
"""
    import tempfile
    from workers.env import describe_spaces
    with tempfile.NamedTemporaryFile(suffix=".npz") as f:
        np.savez(f, **numpy_state(ActorCritic(describe_spaces("CartPole-v1"), PolicyConfig())))
        f.flush()
        out = subprocess.run([sys.executable, "-c", code, f.name], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
