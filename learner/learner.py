"""The Learner: holds the policy and optimizer, computes GAE and applies the A2C update.

A plain class; `service/` wraps it with `ray.remote` and picks its resources.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from learner.config import A2CConfig, PolicyConfig
from learner.gae import gae
from learner.normalize import RunningMeanStd
from learner.optim import make_optimizer
from learner.policy import (CNN_DTYPES, ActorCritic, bfloat16_warning, load_numpy_state, numpy_state,
                            resolve_cnn_precision)
from learner.spaces import SpacesSpec
from learner.rollout import LearnerState, Rollout, Weights
from learner.schedules import entropy_coef_at, learning_rate_at

log = logging.getLogger(__name__)


def choose_device(request: str, gpu_assigned: bool) -> tuple[torch.device, str]:
    """The learner's device and the reason for it, e.g. ("cuda:0", "GPU assigned by Ray").

    `request` is auto, cpu or cuda; `gpu_assigned` says whether the scheduler gave this process
    a GPU. A GPU slot that torch cannot use falls back to CPU, and the reason says so.
    """
    if request == "cpu":
        return torch.device("cpu"), "cpu: learner_device=cpu was requested"
    if not gpu_assigned:
        if request == "cuda":
            raise RuntimeError("learner_device=cuda but no GPU was assigned to the learner")
        return torch.device("cpu"), "cpu: no GPU in the cluster"
    if torch.cuda.is_available():
        return torch.device("cuda:0"), f"cuda:0: GPU {os.environ.get('CUDA_VISIBLE_DEVICES', '?')} assigned by Ray"
    return torch.device("cpu"), (
        f"cpu: fell back from GPU — Ray assigned GPU CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '?')} but torch {torch.__version__} cannot use CUDA "
        f"(torch.version.cuda={torch.version.cuda})")


def a2c_loss(policy: ActorCritic, obs: torch.Tensor, actions: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, entropy_coef: float,
             value_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A2C loss on B samples: -log pi(a|s) A  - entropy_coef H  + value_coef (V - R)^2.

    obs (B, *obs_shape), actions (B,) or (B, A), advantages and returns (B,).
    Returns the scalar loss and its detached parts.
    """
    values, log_probs, entropy = policy.evaluate_actions(obs, actions)
    policy_loss = -(log_probs * advantages).mean()
    value_loss = F.mse_loss(values, returns)
    entropy_mean = entropy.mean()
    loss = policy_loss - entropy_coef * entropy_mean + value_coef * value_loss
    parts = {"policy_loss": policy_loss, "value_loss": value_loss,
             "entropy": entropy_mean, "loss": loss}
    return loss, {k: v.detach() for k, v in parts.items()}


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); NaN when the target is constant."""
    var = target.var()
    return float("nan") if var.item() == 0 else float(1 - (target - predicted).var() / var)


class Learner:
    """Owns the policy and its optimizer; `update(*rollouts)` runs one A2C update, `weights()` exports."""

    def __init__(self, spaces: SpacesSpec, policy_config: PolicyConfig, config: A2CConfig,
                 total_steps: int, seed: int, device_request: str = "auto",
                 gpu_assigned: bool = False, restore: LearnerState | None = None,
                 num_threads: int = 1, cnn_precision: str = "float32") -> None:
        # As many torch threads as the CPUs the scheduler gave this learner: more would take
        # cores from the rollout workers.
        torch.set_num_threads(num_threads)
        self.device, self.device_reason = choose_device(device_request, gpu_assigned)
        cnn_dtype = None
        if spaces.is_image:
            precision, why = resolve_cnn_precision(cnn_precision, self.device)
            cnn_dtype = CNN_DTYPES[precision]
            self.device_reason += f"; convolutions in {precision} ({why})"
            warning = bfloat16_warning(self.device) if cnn_precision == "bfloat16" else ""
            if warning:
                self.device_reason += f", but {warning}"
                log.warning("learner: cnn_precision=%s, but %s", cnn_precision, warning)
        log.info("learner device %s", self.device_reason)
        self.config = config
        self.total_steps = total_steps
        torch.manual_seed(seed)
        self.policy = ActorCritic(spaces, policy_config, cnn_dtype=cnn_dtype).to(self.device)
        self.optimizer = make_optimizer(self.policy.parameters(), config)
        self.generator = torch.Generator().manual_seed(seed)
        self.step, self.updates, self.version = 0, 0, 0
        self.return_norm = RunningMeanStd(()).to(self.device) if config.normalize_rewards else None
        self.discounted: np.ndarray | None = None
        """(N,) running discounted return of each env column, for reward normalisation."""
        if restore is not None:
            load_numpy_state(self.policy, restore.weights.tensors)
            self.optimizer.load_state_dict(
                torch.load(io.BytesIO(restore.optimizer), map_location=self.device, weights_only=True))
            self.step, self.updates, self.version = restore.step, restore.updates, restore.weights.version
            self.generator.manual_seed(seed + restore.updates)
            if self.return_norm is not None and restore.reward_norm is not None:
                for buf, value in zip((self.return_norm.mean, self.return_norm.var, self.return_norm.count),
                                      restore.reward_norm):
                    buf.fill_(value)

    def device_info(self) -> tuple[str, str]:
        """(device, reason) as chosen at start, e.g. ("cpu", "cpu: no GPU in the cluster")."""
        return str(self.device), self.device_reason

    def weights(self) -> Weights:
        """The current policy weights with their version."""
        return Weights(self.version, numpy_state(self.policy))

    def state(self) -> LearnerState:
        """A snapshot for a checkpoint."""
        buf = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buf)
        norm = self.return_norm
        reward_norm = None if norm is None else (float(norm.mean), float(norm.var), float(norm.count))
        return LearnerState(self.weights(), buf.getvalue(), self.step, self.updates, reward_norm)

    def _normalized_rewards(self, rewards: np.ndarray, done: np.ndarray) -> torch.Tensor:
        """(T, N) rewards divided by the running std of each env's discounted return, as a
        tensor on the device; `done` is (T, N) bool, terminated or truncated.

        The running return of each env column carries over between updates (columns keep their
        worker and env order) and restarts at every episode end, as in SB3's VecNormalize. It
        is not checkpointed (nor by SB3): a restarted learner, or a replaced worker's fresh
        envs, start it from 0, which biases the statistics for one episode at most. The
        recurrence over T runs in numpy on the host, where the rewards arrive, which is cheaper
        than T small torch ops for the batches of vector-observation tasks.
        """
        T, N = rewards.shape
        if self.discounted is None or self.discounted.shape != (N,):
            self.discounted = np.zeros(N)
        returns = np.empty((T, N))
        running = self.discounted
        for t in range(T):
            running = running * self.config.gamma + rewards[t]
            returns[t] = running
            running = np.where(done[t], 0.0, running)
        if np.isfinite(returns).all():
            self.return_norm.update(torch.from_numpy(returns.reshape(-1)).to(self.device))
            self.discounted = running
        else:  # NaN/inf rewards must not poison the statistics; the running returns restart
            self.discounted = np.zeros(N)
        return self.return_norm.scale(torch.from_numpy(rewards).to(self.device))

    def _batch(self, rollouts: tuple[Rollout, ...]
               ) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
        """Rollouts joined along the env axis into (T, N_total, ...) arrays on the host, and
        the same as tensors on the device (`bootstrap_values` is (N_total,))."""
        fields = ("obs", "actions", "rewards", "terminated", "truncated", "values",
                  "log_probs", "final_values")
        host = {f: np.concatenate([getattr(r, f) for r in rollouts], axis=1) for f in fields}
        host["bootstrap_values"] = np.concatenate([r.bootstrap_values for r in rollouts])
        return host, {f: torch.as_tensor(a, device=self.device) for f, a in host.items()}

    def update(self, *rollouts: Rollout) -> dict[str, float]:
        """One A2C update on the joined rollouts; returns the update's stats."""
        cfg = self.config
        host, b = self._batch(rollouts)
        steps = sum(r.num_steps for r in rollouts)
        policy_lag = self.version - min(r.weights_version for r in rollouts)
        # Statistics are updated before the loss (as SB3's VecNormalize, which updates them as
        # it steps). Non-finite observations leave the observation statistics alone and skip
        # every gradient step; non-finite rewards leave the reward statistics alone.
        obs_finite = not b["obs"].is_floating_point() or bool(torch.isfinite(b["obs"]).all())
        norm_moved = self.policy.obs_norm is not None and obs_finite
        if norm_moved:
            self.policy.obs_norm.update(b["obs"].reshape(steps, -1))
        rewards = b["rewards"]
        if self.return_norm is not None:
            rewards = self._normalized_rewards(host["rewards"], host["terminated"] | host["truncated"])
        advantages, returns = gae(rewards, b["values"], b["terminated"], b["truncated"],
                                  b["final_values"], b["bootstrap_values"], cfg.gamma, cfg.gae_lambda)
        obs = b["obs"].reshape(steps, *b["obs"].shape[2:])
        actions = b["actions"].reshape(steps, *b["actions"].shape[2:])
        advantages, returns = advantages.reshape(-1), returns.reshape(-1)
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        lr = learning_rate_at(cfg, self.step, self.total_steps)
        ent_coef = entropy_coef_at(cfg, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        size = cfg.mini_batch_size or steps
        # One full batch is taken as it is: shuffling it would change only the order of the
        # loss's sums, for a copy of every observation.
        batches = ([slice(None)] if size >= steps else
                   torch.randperm(steps, generator=self.generator).to(self.device).split(size))
        totals: dict[str, torch.Tensor] = {}
        n_steps = skipped = 0
        for idx in batches:
            if not obs_finite:  # clipped normalisation would hide an inf; the data is bad
                skipped += 1
                continue
            loss, parts = a2c_loss(self.policy, obs[idx], actions[idx], advantages[idx],
                                   returns[idx], ent_coef, cfg.value_coef)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            # NaN/inf in observations, loss or gradients: skip the step, keep the weights finite.
            if not bool(torch.isfinite(loss) & torch.isfinite(parts["grad_norm"])):
                skipped += 1
                continue
            self.optimizer.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0) + v
            n_steps += 1
        stats = {k: float(v) / n_steps for k, v in totals.items()}  # one host sync per key
        self.step += steps
        self.updates += 1
        if n_steps or norm_moved:  # new observation statistics are a new version too
            self.version += 1
        stats.update(explained_variance=explained_variance(b["values"].reshape(-1), returns),
                     learning_rate=lr, entropy_coef=ent_coef, policy_lag=policy_lag,
                     weights_version=self.version, step=self.step, nonfinite_steps=skipped,
                     skipped=n_steps == 0)
        return stats

    def update_and_weights(self, *rollouts: Rollout) -> tuple[dict[str, float], Weights]:
        """`update`, then `weights`: the trainer's call, with two returns, so that each update
        costs the learner one actor task instead of two."""
        return self.update(*rollouts), self.weights()
