"""The A2C loss against a small hand-written reference, and one update's behaviour."""

import numpy as np
import torch

from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner, a2c_loss
from learner.policy import ActorCritic
from learner.spaces import SpacesSpec
from learner.rollout import Rollout

DISCRETE = SpacesSpec(obs_shape=(3,), action_type="discrete", action_n=2)
BOX = SpacesSpec(obs_shape=(3,), action_type="box", action_shape=(2,), action_low=(-1.0, -1.0),
                 action_high=(1.0, 1.0))


def test_discrete_loss_matches_hand_computation():
    torch.manual_seed(0)
    policy = ActorCritic(DISCRETE, PolicyConfig(hidden_sizes=(4,)))
    obs = torch.randn(5, 3)
    actions = torch.tensor([0, 1, 1, 0, 1])
    adv = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    ret = torch.tensor([2.0, 0.0, 1.0, -1.0, 4.0])
    loss, parts = a2c_loss(policy, obs, actions, adv, ret, entropy_coef=0.1, value_coef=0.5)

    with torch.no_grad():
        h = torch.tanh(obs @ policy.torso[0].weight.T + policy.torso[0].bias)
        logits = h @ policy.action_head.weight.T + policy.action_head.bias
        v = (h @ policy.value_head.weight.T + policy.value_head.bias)[:, 0]
        p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
        logp = torch.log(p[torch.arange(5), actions])
        ent = -(p * torch.log(p)).sum(1)
        ref_policy = -(logp * adv).mean()
        ref_value = ((v - ret) ** 2).mean()
        ref = ref_policy - 0.1 * ent.mean() + 0.5 * ref_value
    torch.testing.assert_close(loss.detach(), ref)
    torch.testing.assert_close(parts["policy_loss"], ref_policy)
    torch.testing.assert_close(parts["value_loss"], ref_value)
    torch.testing.assert_close(parts["entropy"], ent.mean())


def test_gaussian_log_prob_and_entropy_sum_over_action_dims():
    torch.manual_seed(1)
    policy = ActorCritic(BOX, PolicyConfig(hidden_sizes=(4,), log_std_init=-0.5))
    obs = torch.randn(6, 3)
    actions = torch.randn(6, 2) * 3  # outside the bounds: log-probs are of the unclipped sample
    value, logp, ent = policy.evaluate_actions(obs, actions)
    assert value.shape == logp.shape == ent.shape == (6,)
    with torch.no_grad():
        mean = policy.action_head(policy.torso(obs))
        std = torch.exp(torch.tensor(-0.5))
        ref = (-((actions - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * np.log(2 * np.pi)).sum(1)
        ref_ent = torch.full((6,), 2 * (0.5 + 0.5 * np.log(2 * np.pi) + (-0.5)))
    torch.testing.assert_close(logp.detach(), ref)
    torch.testing.assert_close(ent.detach(), ref_ent.float())
    clipped = policy.clip_action(actions.numpy())
    assert clipped.min() >= -1 and clipped.max() <= 1


def test_act_log_prob_has_one_value_per_sample():
    policy = ActorCritic(DISCRETE, PolicyConfig())
    action, logp, value = policy.act(torch.randn(7, 3))
    assert action.shape == logp.shape == value.shape == (7,)


def _rollout(T=8, N=2, version=0, seed=0):
    rng = np.random.default_rng(seed)
    return Rollout(
        obs=rng.normal(size=(T, N, 3)).astype(np.float32), actions=rng.integers(0, 2, (T, N)),
        rewards=np.ones((T, N), np.float32), terminated=np.zeros((T, N), bool),
        truncated=np.zeros((T, N), bool), values=np.zeros((T, N), np.float32),
        log_probs=np.full((T, N), np.log(0.5), np.float32), final_values=np.zeros((T, N), np.float32),
        bootstrap_values=np.zeros(N, np.float32), episode_returns=np.zeros(0),
        episode_lengths=np.zeros(0, np.int64), weights_version=version)


def test_full_batch_update_takes_one_step_and_minibatches_take_several():
    full = Learner(DISCRETE, PolicyConfig(), A2CConfig(steps_per_batch=32, mini_batch_size=None), 1000, 0)
    mini = Learner(DISCRETE, PolicyConfig(), A2CConfig(steps_per_batch=32, mini_batch_size=8), 1000, 0)
    full.update(_rollout(), _rollout(seed=1))
    mini.update(_rollout(), _rollout(seed=1))
    assert full.optimizer.state_dict()["state"][0]["step"].item() == 1
    assert mini.optimizer.state_dict()["state"][0]["step"].item() == 4


def test_update_reports_stats_lag_and_schedules():
    cfg = A2CConfig(steps_per_batch=16, mini_batch_size=None, learning_rate=1e-3,
                    learning_rate_schedule="linear", learning_rate_final=0.0)
    learner = Learner(DISCRETE, PolicyConfig(), cfg, total_steps=64, seed=0)
    first = learner.update(_rollout(version=0))
    second = learner.update(_rollout(version=0))  # collected one version ago
    assert first["policy_lag"] == 0 and second["policy_lag"] == 1
    assert first["learning_rate"] == 1e-3 and second["learning_rate"] == 1e-3 * (1 - 16 / 64)
    assert second["weights_version"] == 2 and second["step"] == 32
    for key in ("policy_loss", "value_loss", "entropy", "loss", "grad_norm", "explained_variance"):
        assert key in first


def test_config_is_immutable_and_keeps_the_seed_defaults():
    import pydantic
    import pytest
    cfg = A2CConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.learning_rate = 1.0  # type: ignore[misc]
    assert (cfg.steps_per_batch, cfg.mini_batch_size, cfg.learning_rate, cfg.gamma, cfg.gae_lambda,
            cfg.entropy_coef, cfg.value_coef, cfg.max_grad_norm, cfg.normalize_advantages) == (
        2048, 32, 3e-4, 0.99, 0.95, 0.01, 0.5, 0.5, False)


def test_nonfinite_observations_skip_the_step_and_keep_weights_finite():
    learner = Learner(DISCRETE, PolicyConfig(), A2CConfig(steps_per_batch=16, mini_batch_size=None), 1000, 0)
    before = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    bad = _rollout()
    bad.obs[3, 1, 0] = np.nan
    stats = learner.update(bad)
    assert stats["skipped"] and stats["nonfinite_steps"] == 1 and stats["weights_version"] == 0
    assert all(torch.equal(before[k], v) for k, v in learner.policy.state_dict().items())
    good = learner.update(_rollout())
    assert not good["skipped"] and good["weights_version"] == 1
    assert all(torch.isfinite(v).all() for v in learner.policy.state_dict().values())


def test_act_samples_and_log_probs_agree_with_evaluate_actions():
    torch.manual_seed(2)
    for spaces in (DISCRETE, BOX):
        policy = ActorCritic(spaces, PolicyConfig(hidden_sizes=(8,), log_std_init=-0.3))
        obs = torch.randn(500, 3)
        gen = torch.Generator().manual_seed(0)
        action, logp, value = policy.act(obs, generator=gen)
        ref_value, ref_logp, _ = policy.evaluate_actions(obs, action)
        torch.testing.assert_close(logp, ref_logp.detach())
        torch.testing.assert_close(value, ref_value.detach())
        det, det_logp, _ = policy.act(obs, deterministic=True)
        dist, _ = policy._heads(obs)
        mode = dist.probs.argmax(-1) if spaces is DISCRETE else dist.mean
        torch.testing.assert_close(det, mode.detach())
        torch.testing.assert_close(det_logp, policy.evaluate_actions(obs, det)[1].detach())
    # Sampled discrete actions follow the policy's probabilities.
    policy = ActorCritic(DISCRETE, PolicyConfig(hidden_sizes=(8,)))
    with torch.no_grad():
        policy.action_head.bias.copy_(torch.tensor([0.0, 1.0]))
    actions, _, _ = policy.act(torch.zeros(20000, 3), generator=torch.Generator().manual_seed(1))
    p1 = torch.sigmoid(torch.tensor(1.0 - 0.0)).item()
    assert abs(actions.float().mean().item() - p1) < 0.015
    # With more actions too, each at its own frequency; an action whose probability underflows
    # to 0 is never drawn.
    four = ActorCritic(SpacesSpec(obs_shape=(3,), action_type="discrete", action_n=4), PolicyConfig(hidden_sizes=(8,)))
    bias = torch.tensor([0.0, 1.0, 2.0, -200.0])
    with torch.no_grad():
        four.action_head.bias.copy_(bias)
    actions, _, _ = four.act(torch.zeros(40000, 3), generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(actions, minlength=4).double() / actions.numel()
    torch.testing.assert_close(freq, torch.softmax(bias.double(), 0), atol=0.01, rtol=0)
    assert freq[3] == 0
    # The same actions as torch.multinomial from the same generator (4 actions, 1 action, a batch of 1).
    for n, batch in ((4, 64), (1, 64), (4, 1)):
        policy = ActorCritic(SpacesSpec(obs_shape=(3,), action_type="discrete", action_n=n), PolicyConfig(hidden_sizes=(8,)))
        obs = torch.randn(batch, 3)
        actions, _, _ = policy.act(obs, generator=torch.Generator().manual_seed(3))
        probs = torch.log_softmax(policy._forward(obs)[1], -1).exp().detach()  # as act computes them
        expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(-1)
        assert torch.equal(actions, expected), (n, batch)


def test_gsde_act_log_probs_agree_with_evaluate_actions_and_its_noise_has_the_stated_std():
    torch.manual_seed(3)
    policy = ActorCritic(BOX, PolicyConfig(hidden_sizes=(8,), log_std_init=-0.5, use_sde=True))
    assert policy.log_std.shape == (8, 2)  # one std per (hidden feature, action component)
    obs = torch.randn(400, 3)
    gen = torch.Generator().manual_seed(0)
    action, logp, value = policy.act(obs, generator=gen, exploration=policy.sample_exploration(400, gen))
    ref_value, ref_logp, entropy = policy.evaluate_actions(obs, action)
    torch.testing.assert_close(logp, ref_logp.detach())
    torch.testing.assert_close(value, ref_value.detach())
    # For one state, the noise over many drawn matrices has the std the log-prob assumes.
    one = obs[:1].expand(20000, 3)
    noisy, _, _ = policy.act(one, exploration=policy.sample_exploration(20000, gen))
    dist, _ = policy._heads(obs[:1])
    torch.testing.assert_close(noisy.std(0), dist.stddev[0].detach(), rtol=0.03, atol=0.0)
    # The std trains through log_std only: the features get no gradient from the noise's scale.
    entropy.sum().backward()
    assert policy.log_std.grad.abs().sum() > 0 and policy.torso[0].weight.grad is None
    try:
        policy.act(obs, generator=gen)
    except ValueError as exc:
        assert "exploration" in str(exc)
    else:
        raise AssertionError("gSDE sampling without exploration matrices must be refused")
