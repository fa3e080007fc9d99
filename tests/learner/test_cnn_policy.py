"""The policy's torso: Nature CNN for images (chosen by `torso: auto`), MLP for vectors; uint8
images scaled inside the policy; the zoo's orthogonal init; the MLP's weights as before."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.policy import ActorCritic
from learner.spaces import SpacesSpec, policy_mismatch

ATARI = SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete", action_n=6)
VECTOR = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)


def test_auto_torso_is_the_nature_cnn_for_images_and_an_mlp_for_vectors():
    cnn = ActorCritic(ATARI, PolicyConfig())
    convs = [m for m in cnn.torso if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 32, (8, 8), (4, 4)), (32, 64, (4, 4), (2, 2)), (64, 64, (3, 3), (1, 1))]
    assert cnn.torso[-2].in_features == 64 * 7 * 7 and cnn.torso[-2].out_features == 512
    assert cnn.action_head.in_features == 512 and cnn.value_torso is None  # shared, as SB3's CnnPolicy
    mlp = ActorCritic(VECTOR, PolicyConfig())
    assert not any(isinstance(m, nn.Conv2d) for m in mlp.modules())


def test_cnn_takes_uint8_frames_and_returns_one_value_per_observation():
    policy = ActorCritic(ATARI, PolicyConfig())
    obs = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    action, log_prob, value = policy.act(obs)
    assert action.shape == log_prob.shape == value.shape == (5,) and action.dtype == torch.int64
    value, log_prob, entropy = policy.evaluate_actions(obs, action)
    assert value.shape == log_prob.shape == entropy.shape == (5,)
    assert torch.allclose(entropy, torch.full((5,), math.log(6)), atol=1e-3)  # 0.01-gain head: near uniform
    # Scaling to [0, 1] happens inside, on the input's device: the same as the torso on x / 255.
    expected = policy.value_head(policy.torso(obs.float() / 255)).squeeze(-1)
    torch.testing.assert_close(policy.value(obs), expected.detach())


def test_channels_last_images_are_taken_too():
    spaces = SpacesSpec(obs_shape=(96, 96, 3), obs_dtype="uint8", action_type="discrete", action_n=5)
    policy = ActorCritic(spaces, PolicyConfig())
    assert policy.torso[0].in_channels == 3
    obs = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert policy.act(obs)[2].shape == (2,)
    scaled = policy._scaled(obs)  # (B, C, H, W) in shape, channels-last in memory, as the convolutions'
    assert scaled.shape == (2, 3, 96, 96) and scaled.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(scaled, obs.permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize("spaces, config, field", [
    (ATARI, PolicyConfig(torso="mlp"), "policy.torso"),
    (VECTOR, PolicyConfig(torso="nature_cnn"), "policy.torso"),
    (ATARI, PolicyConfig(normalize_observations=True), "policy.normalize_observations"),
    (SpacesSpec(obs_shape=(4, 20, 20), obs_dtype="uint8", action_type="discrete", action_n=2),
     PolicyConfig(), "policy.torso"),
])
def test_torsos_that_do_not_fit_the_observations_are_refused(spaces, config, field):
    assert policy_mismatch(spaces, config)[0] == field
    with pytest.raises(ValueError, match=field):
        ActorCritic(spaces, config)


def test_convolutions_run_channels_last_as_a_layout_only():
    """The torso's convolutions are stored channels-last (faster on CPU; docs/workloads.md); the
    scaling, the function, its gradients and the state dict's arrays are those of the usual
    layout."""
    import copy

    from learner.policy import numpy_state
    policy = ActorCritic(ATARI, PolicyConfig())
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in policy.torso if isinstance(m, nn.Conv2d))
    obs = torch.randint(0, 256, (6, 4, 84, 84), dtype=torch.uint8)
    scaled = policy._scaled(obs)
    assert scaled.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(scaled, obs.float() / 255)
    given = obs.float().contiguous(memory_format=torch.channels_last)  # already its dtype and layout
    policy._scaled(given)
    assert torch.equal(given, obs.float())  # scaled into a copy, never in the caller's tensor
    usual = copy.deepcopy(policy)
    usual.torso.to(memory_format=torch.contiguous_format)
    assert not usual.torso[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = obs.float() / 255  # (B, C, H, W)-contiguous: the usual layout's kernels for `usual`
    features = [p.torso(x) for p in (policy, usual)]
    torch.testing.assert_close(features[0], features[1], rtol=1e-4, atol=1e-5)
    for f in features:
        f.square().sum().backward()
    for a, b in zip(policy.torso.parameters(), usual.torso.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4)
    assert all(a.flags.c_contiguous for a in numpy_state(policy).values())  # archives' byte order


def test_init_is_orthogonal_with_the_zoo_gains():
    policy = ActorCritic(ATARI, PolicyConfig())
    for module, gain in [*((m, math.sqrt(2)) for m in policy.torso if isinstance(m, (nn.Conv2d, nn.Linear))),
                         (policy.action_head, 0.01), (policy.value_head, 1.0)]:
        w = module.weight.detach().reshape(module.weight.shape[0], -1)
        rows = min(w.shape)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, gain ** 2 * torch.eye(rows), atol=1e-4 * gain ** 2, rtol=1e-3)
        assert not module.bias.detach().any()


def test_mlp_policy_keeps_its_state_dict_keys():
    # Checkpoints of MLP policies from before the CNN must still load.
    keys = list(ActorCritic(VECTOR, PolicyConfig(share_torso=False, normalize_observations=True)).state_dict())
    assert keys == ["obs_norm.mean", "obs_norm.var", "obs_norm.count", "torso.0.weight", "torso.0.bias",
                    "torso.2.weight", "torso.2.bias", "value_torso.0.weight", "value_torso.0.bias",
                    "value_torso.2.weight", "value_torso.2.bias", "action_head.weight", "action_head.bias",
                    "value_head.weight", "value_head.bias"]


def test_spaces_of_old_manifests_read_as_float32():
    old = {"obs_shape": [4], "action_type": "discrete", "action_n": 2}  # no obs_dtype
    assert SpacesSpec(**old).obs_dtype == "float32" and not SpacesSpec(**old).is_image


def test_learner_trains_on_uint8_frames_and_its_checkpoint_round_trips():
    from learner.rollout import Rollout
    learner = Learner(ATARI, PolicyConfig(), A2CConfig(steps_per_batch=8, mini_batch_size=None,
                                                       optimizer="rmsprop"), 800, seed=0)
    T, N = 2, 4
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    rollout = Rollout(rng.integers(0, 256, (T, N, 4, 84, 84), dtype=np.uint8), rng.integers(0, 6, (T, N)),
                      np.sign(f32(T, N)), np.zeros((T, N), bool), np.zeros((T, N), bool), f32(T, N),
                      np.full((T, N), -math.log(6), np.float32), np.zeros((T, N), np.float32), f32(N),
                      np.zeros(0), np.zeros(0, np.int64), 0)
    host, device = learner._batch((rollout,))
    assert host["obs"].dtype == np.uint8 and device["obs"].dtype == torch.uint8  # scaled in the policy
    stats = learner.update(rollout)
    assert not stats["skipped"] and stats["weights_version"] == 1
    config = {"env": "PongNoFrameskip-v4", "policy": PolicyConfig().model_dump(mode="json"),
              "a2c": learner.config.model_dump(mode="json")}
    checkpoint = read_archive(archive_bytes(learner.state(), ATARI, "PongNoFrameskip-v4", config))
    assert checkpoint.spaces == ATARI
    restored = checkpoint.policy()
    obs = torch.from_numpy(rollout.obs[0])
    torch.testing.assert_close(restored.value(obs), learner.policy.value(obs))


def test_bfloat16_learner_runs_the_cnn_in_bfloat16_and_keeps_everything_else_float32():
    """cnn_precision=bfloat16: the convolutions run in bfloat16 under autocast, the
    features, heads, loss, weights and optimizer stay float32, and the gradient points the way
    float32's does (bfloat16 keeps 8 bits of mantissa, so not to float32's digits)."""
    from learner.learner import a2c_loss
    rng = np.random.default_rng(1)
    obs = torch.from_numpy(rng.integers(0, 256, (32, 4, 84, 84), dtype=np.uint8))
    actions = torch.from_numpy(rng.integers(0, 6, 32))
    advantages, returns = torch.randn(32, generator=torch.Generator().manual_seed(0)), torch.zeros(32)
    config = A2CConfig(steps_per_batch=32, mini_batch_size=None, optimizer="rmsprop_tf")
    grads, dtypes = {}, {}
    for precision in ("float32", "bfloat16"):
        learner = Learner(ATARI, PolicyConfig(), config, 3200, seed=0, cnn_precision=precision)
        policy = learner.policy
        hook = policy.torso[0].register_forward_hook(
            lambda m, i, out, p=precision: dtypes.setdefault(p, out.dtype) and None)
        loss, parts = a2c_loss(policy, obs, actions, advantages, returns, 0.01, 0.25)
        hook.remove()
        assert loss.dtype == torch.float32 and policy.value(obs).dtype == torch.float32
        loss.backward()
        grads[precision] = [p.grad.reshape(-1) for p in policy.parameters()]
        assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert dtypes == {"float32": torch.float32, "bfloat16": torch.bfloat16}
    cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in zip(*grads.values())]
    assert min(cosines) > 0.99, cosines  # each parameter's gradient, the first convolution's too
    assert not torch.equal(grads["float32"][0], grads["bfloat16"][0]), "the convolutions ran in bfloat16"


def _cpu(monkeypatch, amx: bool, avx512_bf16: bool, machine: str = "x86_64") -> None:
    """Make this CPU look like one with (or without) AMX and AVX512-BF16."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr("platform.machine", lambda: machine)


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False)])
def test_the_device_line_names_the_convolutions_precision_and_why(monkeypatch, caplog, amx, avx512_bf16):
    """auto runs bfloat16 where the CPU has AMX or AVX512-BF16 (both measured faster than float32)
    and float32 elsewhere; bfloat16 asked for on a CPU with neither is named slow."""
    _cpu(monkeypatch, amx, avx512_bf16)
    config = A2CConfig(steps_per_batch=32, mini_batch_size=None)
    line = {precision: Learner(ATARI, PolicyConfig(), config, 3200, seed=0, cnn_precision=precision)
            for precision in ("auto", "bfloat16", "float32")}
    units = "AMX" if amx else "AVX512-BF16" if avx512_bf16 else ""
    auto = line["auto"]
    assert auto.policy.cnn_dtype == (torch.bfloat16 if units else None)
    assert auto.device_info()[1] == ("cpu: no GPU in the cluster; convolutions in bfloat16 (cnn_precision auto: "
                                     f"this CPU has {units})" if units else
                                     "cpu: no GPU in the cluster; convolutions in float32 (cnn_precision auto: "
                                     "this CPU has no bfloat16 units measured faster than float32)")
    bf16 = line["bfloat16"].device_info()[1]
    assert bf16.startswith("cpu: no GPU in the cluster; convolutions in bfloat16 (cnn_precision bfloat16)")
    slow = "this CPU has neither AMX nor AVX512-BF16, so they run slower than float32: use float32"
    assert (slow in bf16) == (not units), bf16
    assert ("neither AMX" in caplog.text) == (not units)  # logged once, for the explicit bfloat16
    assert line["float32"].device_info()[1] == "cpu: no GPU in the cluster; convolutions in float32 (cnn_precision float32)"
    mlp = Learner(VECTOR, PolicyConfig(), config, 3200, seed=0, cnn_precision="auto").device_info()[1]
    assert mlp == "cpu: no GPU in the cluster"  # no convolutions to speak of


@pytest.mark.parametrize("avx512_bf16", [True, False])
def test_a_worker_resolves_auto_for_its_own_cpu(monkeypatch, caplog, avx512_bf16):
    """Workers run on CPU nodes that may differ from the learner's: each resolves auto itself,
    and warns of bfloat16 asked for on a CPU without units for it."""
    from learner.acting import acting_policy
    _cpu(monkeypatch, amx=False, avx512_bf16=avx512_bf16)
    acting = acting_policy(ATARI, PolicyConfig(), seed=0, cnn_precision="auto")
    assert acting.policy.cnn_dtype == (torch.bfloat16 if avx512_bf16 else None)
    assert acting.policy.torso[0].weight.dtype == (torch.bfloat16 if avx512_bf16 else torch.float32)
    assert acting_policy(ATARI, PolicyConfig(), seed=0).policy.cnn_dtype is None  # evaluations: float32
    assert "neither AMX" not in caplog.text
    assert acting_policy(ATARI, PolicyConfig(), seed=0, cnn_precision="bfloat16").policy.cnn_dtype == torch.bfloat16
    assert ("acting: cnn_precision=bfloat16, but this CPU has neither AMX nor AVX512-BF16" in caplog.text) == (
        not avx512_bf16), caplog.text


def test_bfloat16_units_count_only_native_ones(monkeypatch):
    from learner.policy import bfloat16_units, bfloat16_warning, resolve_cnn_precision
    asked = {}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.setdefault(
        "emulation", including_emulation))
    assert bfloat16_units(torch.device("cuda")) == "" and asked == {"emulation": False}  # a V100 emulates it
    assert bfloat16_warning(torch.device("cuda")) == "this GPU has no bfloat16 units"
    assert resolve_cnn_precision("auto", torch.device("cuda"))[0] == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_cnn_precision("auto", torch.device("cuda")) == ("bfloat16", "cnn_precision auto: this GPU has "
                                                                               "native bfloat16")
    _cpu(monkeypatch, amx=True, avx512_bf16=True, machine="aarch64")
    assert bfloat16_units(torch.device("cpu")) == ""  # ARM not measured: auto stays float32...
    assert bfloat16_warning(torch.device("cpu")) == ""  # ...and bfloat16 asked for gets no claim either way
    assert resolve_cnn_precision("float32", torch.device("cuda")) == ("float32", "cnn_precision float32")


def test_bfloat16_workers_act_with_the_function_the_learner_trains():
    """cnn_precision=bfloat16: a worker keeps its torso's weights in bfloat16 (no conversion at
    every step) and computes, to the bit, what the learner's autocast computes; a float32
    worker would act with another function than the one the learner trains."""
    from learner.acting import acting_policy
    learner = Learner(ATARI, PolicyConfig(), A2CConfig(steps_per_batch=32, mini_batch_size=None), 3200,
                      seed=0, cnn_precision="bfloat16")
    weights = learner.weights().tensors
    obs = np.random.default_rng(1).integers(0, 256, (8, 4, 84, 84), dtype=np.uint8)
    with torch.no_grad():
        trained = learner.policy.value(torch.from_numpy(obs)).numpy()
        log_p = torch.log_softmax(learner.policy._forward(torch.from_numpy(obs))[1], -1).numpy()
    acting = {}
    for precision in ("bfloat16", "float32"):
        acting[precision] = acting_policy(ATARI, PolicyConfig(), 0, precision)
        acting[precision].load_weights(weights)
    worker = acting["bfloat16"]
    assert {p.dtype for p in worker.policy.torso.parameters()} == {torch.bfloat16}
    assert worker.policy.value_head.weight.dtype == torch.float32
    action, log_prob, value = worker.act(obs)
    assert value.dtype == log_prob.dtype == np.float32
    np.testing.assert_array_equal(value, trained)
    np.testing.assert_array_equal(log_prob, log_p[np.arange(8), action])
    assert not np.array_equal(acting["float32"].value(obs), trained)
    # Weights loaded after the conversion are converted too, as the next update's are.
    learner.policy.value_head.bias.data += 1
    worker.load_weights(learner.weights().tensors)
    np.testing.assert_array_equal(worker.value(obs), trained + 1)
