"""ONNX export: onnxruntime's actions equal the checkpoint's deterministic actions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.export import OPSET, onnx_bytes
from learner.learner import Learner
from learner.policy import obs_tensor
from learner.spaces import SpacesSpec

ort = pytest.importorskip("onnxruntime")
N = 1000

CASES = {
    "discrete-mlp": (SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2),
                     PolicyConfig(normalize_observations=True, share_torso=False)),
    "gaussian-mlp": (SpacesSpec(obs_shape=(11,), action_type="box", action_shape=(3,),
                                action_low=(-1.0, -1.0, -0.5), action_high=(1.0, 1.0, 0.5)),
                     PolicyConfig(normalize_observations=True, share_torso=False, log_std_init=-1.0)),
    "gsde-mlp": (SpacesSpec(obs_shape=(3,), action_type="box", action_shape=(1,), action_low=(-2.0,),
                            action_high=(2.0,)),
                 PolicyConfig(normalize_observations=True, share_torso=False, use_sde=True)),
    "nature-cnn": (SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete", action_n=6),
                   PolicyConfig(torso="nature_cnn", share_torso=True)),
    "nature-cnn-channels-last": (SpacesSpec(obs_shape=(84, 84, 4), obs_dtype="uint8", action_type="discrete",
                                            action_n=4), PolicyConfig(torso="nature_cnn", share_torso=True)),
}


def _checkpoint(spaces: SpacesSpec, config: PolicyConfig):
    """A checkpoint as the service writes it, of a policy whose outputs depend on its input
    (the action head's init gain of 0.01 would leave near-ties) and with observation
    statistics far from (0, 1), read back through the archive."""
    learner = Learner(spaces, config, A2CConfig(steps_per_batch=64), 4096, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head = learner.policy.action_head
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) / head.weight.shape[1] ** 0.5 * 3)
        if learner.policy.obs_norm is not None:
            learner.policy.obs_norm.mean.copy_(torch.randn(spaces.obs_dim, generator=gen, dtype=torch.float64) * 3)
            learner.policy.obs_norm.var.copy_(torch.rand(spaces.obs_dim, generator=gen, dtype=torch.float64) * 9 + 0.1)
    config_json = {"env": "X-v0", "policy": config.model_dump(mode="json")}
    return read_archive(archive_bytes(learner.state(), spaces, "X-v0", config_json))


def _observations(spaces: SpacesSpec) -> np.ndarray:
    rng = np.random.default_rng(2)
    if spaces.obs_dtype == "uint8":
        return rng.integers(0, 256, (N, *spaces.obs_shape), dtype=np.uint8)
    return (rng.normal(size=(N, *spaces.obs_shape)) * 4).astype(np.float32)


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_actions_equal_the_checkpoints_deterministic_actions(case):
    spaces, config = CASES[case]
    ckpt = _checkpoint(spaces, config)
    policy = ckpt.policy()
    model = onnx_bytes(policy)
    onnx.checker.check_model(onnx.load_from_string(model))
    assert onnx.load_from_string(model).opset_import[0].version == OPSET
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"]
    obs = _observations(spaces)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"obs": obs})))
    action, _, value = policy.act(obs_tensor(obs, spaces), deterministic=True)
    expected = policy.clip_action(action.numpy())
    if spaces.action_type == "discrete":
        assert list(out) == ["action", "logits", "value"]
        assert out["action"].dtype == np.int64 and out["action"].shape == (N,)
        assert np.array_equal(out["action"], expected)
        assert len(np.unique(expected)) > 1  # the comparison is not of a constant policy
    else:
        assert list(out) == ["action", "mean", "std", "value"]
        assert out["action"].shape == (N, *spaces.action_shape)
        np.testing.assert_allclose(out["action"], expected, rtol=1e-5, atol=1e-5)
        clipped = (expected == np.array(spaces.action_low)) | (expected == np.array(spaces.action_high))
        assert 0 < clipped.mean() < 1  # some actions hit the bounds, some do not: the clip is in the graph
        np.testing.assert_allclose(out["std"], policy._action_std(policy._forward(obs_tensor(obs, spaces))[0])
                                   .detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["value"], value.numpy(), rtol=1e-4, atol=1e-4)


def test_one_observation_and_a_batch_both_run():
    spaces, config = CASES["discrete-mlp"]
    session = ort.InferenceSession(onnx_bytes(_checkpoint(spaces, config).policy()))
    assert session.run(["action"], {"obs": np.zeros((1, 4), np.float32)})[0].shape == (1,)
    assert session.run(["action"], {"obs": np.zeros((257, 4), np.float32)})[0].shape == (257,)
