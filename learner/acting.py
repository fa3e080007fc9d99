"""The policy as rollout workers and evaluations run it: numpy in, numpy out.

`acting_policy` gives MLP policies as `NumpyPolicy`, the same network's forward pass and
distributions written in numpy, so that a worker of a vector-observation task never imports
torch (that import is most of a worker's CPU before its first env step, and every job's start
waits for its workers; docs/benchmarks.md, "Start-up and exit"). Image policies (the Nature
CNN) run as torch's `ActorCritic` behind the same interface (`TorchActing`). Both take the
learner's weights by state-dict name; tests/learner/test_acting.py checks the numpy policy's
values, log-probabilities and action distributions against `ActorCritic`.

The learner trains with `ActorCritic.evaluate_actions` in torch either way.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from learner.config import NORMALIZE_CLIP, NORMALIZE_EPS, PolicyConfig
from learner.spaces import SpacesSpec, clip_action, policy_mismatch

log = logging.getLogger(__name__)

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class NumpyPolicy:
    """`ActorCritic`'s `act` and `value` for an MLP torso, in float32 numpy, drawing from its own
    `numpy.random.Generator` seeded with `seed`."""

    cnn_precision = None
    """No convolutional torso (as `ActorCritic.cnn_precision` of an MLP policy)."""

    def __init__(self, spaces: SpacesSpec, config: PolicyConfig, seed: int) -> None:
        mismatch = policy_mismatch(spaces, config)
        if mismatch is not None:
            raise ValueError(f"{mismatch[0]}: {mismatch[1]}")
        if spaces.is_image:
            raise ValueError("NumpyPolicy runs MLP policies; image observations need TorchActing")
        self.spaces, self.config = spaces, config
        self.discrete = spaces.action_type == "discrete"
        self.rng = np.random.default_rng(seed)
        self._activation = np.tanh if config.activation == "tanh" else (lambda x: np.maximum(x, 0, out=x))
        self.torso: list[tuple[np.ndarray, np.ndarray]] | None = None  # set by `load`

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The state dict's names and shapes for these spaces and config, as `ActorCritic`'s."""
        shapes: dict[str, tuple[int, ...]] = {}
        for prefix in ("torso",) if self.config.share_torso else ("torso", "value_torso"):
            width = self.spaces.obs_dim
            for i, hidden in enumerate(self.config.hidden_sizes):
                shapes[f"{prefix}.{2 * i}.weight"], shapes[f"{prefix}.{2 * i}.bias"] = (hidden, width), (hidden,)
                width = hidden
        shapes.update({"action_head.weight": (self.spaces.action_dim, width), "action_head.bias": (self.spaces.action_dim,),
                       "value_head.weight": (1, width), "value_head.bias": (1,)})
        if not self.discrete:
            shapes["log_std"] = (width, self.spaces.action_dim) if self.config.use_sde else (self.spaces.action_dim,)
        if self.config.normalize_observations:
            shapes.update({"obs_norm.mean": (self.spaces.obs_dim,), "obs_norm.var": (self.spaces.obs_dim,),
                           "obs_norm.count": ()})
        return shapes

    def load_weights(self, tensors: dict[str, np.ndarray]) -> None:
        """Take the weights of `learner.policy.numpy_state` (a state dict of numpy arrays); its
        names and shapes must be this policy's exactly, as torch's strict loading requires."""
        expected = self.expected_shapes()
        given = {name: tuple(np.shape(tensors[name])) for name in tensors}
        if given != expected:
            wrong = sorted(n for n in expected.keys() & given.keys() if given[n] != expected[n])
            raise ValueError(f"weights do not fit this policy: missing {sorted(expected.keys() - given.keys())}, "
                             f"unexpected {sorted(given.keys() - expected.keys())}, "
                             f"wrong shapes {[(n, given[n], expected[n]) for n in wrong]}")
        layers = [f"{2 * i}" for i in range(len(self.config.hidden_sizes))]

        def torso(prefix: str) -> list[tuple[np.ndarray, np.ndarray]]:
            # x @ W.T as a product with a contiguous transposed copy: one BLAS call per layer.
            return [(np.ascontiguousarray(tensors[f"{prefix}.{i}.weight"].T, np.float32),
                     np.asarray(tensors[f"{prefix}.{i}.bias"], np.float32)) for i in layers]

        self.torso = torso("torso")
        self.value_torso = None if self.config.share_torso else torso("value_torso")
        self.action_head = (np.ascontiguousarray(tensors["action_head.weight"].T, np.float32),
                            np.asarray(tensors["action_head.bias"], np.float32))
        self.value_head = (np.asarray(tensors["value_head.weight"], np.float32).reshape(-1),
                           float(np.asarray(tensors["value_head.bias"]).reshape(())))
        self.std = None if self.discrete else np.exp(np.asarray(tensors["log_std"], np.float32))
        self.obs_norm = None
        if self.config.normalize_observations:
            mean, var = (np.asarray(tensors[f"obs_norm.{k}"], np.float64) for k in ("mean", "var"))
            self.obs_norm = (mean, np.sqrt(var + NORMALIZE_EPS))

    def _features(self, layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
        """(B, obs_dim) -> (B, hidden): each Linear layer, then the activation."""
        for weight, bias in layers:
            x = self._activation(x @ weight + bias)
        return x

    def _forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, *obs_shape) -> (latent (B, hidden), action head's out (B, A), values (B,))."""
        if self.torso is None:
            raise RuntimeError("NumpyPolicy.load_weights was not called: no weights")
        x = np.asarray(obs, np.float32).reshape(len(obs), -1)
        if self.obs_norm is not None:
            mean, std = self.obs_norm
            x = np.clip((x - mean) / std, -NORMALIZE_CLIP, NORMALIZE_CLIP).astype(np.float32)
        latent = self._features(self.torso, x)
        out = latent @ self.action_head[0] + self.action_head[1]
        value_latent = latent if self.value_torso is None else self._features(self.value_torso, x)
        return latent, out, value_latent @ self.value_head[0] + np.float32(self.value_head[1])

    def _action_std(self, latent: np.ndarray) -> np.ndarray:
        """(B, A) std of the Gaussian head: exp(log_std), or gSDE's sqrt(latent^2 @ std^2)."""
        if not self.config.use_sde:
            return np.broadcast_to(self.std, (len(latent), self.std.shape[-1]))
        return np.sqrt(np.square(latent) @ np.square(self.std) + np.float32(1e-6))

    def sample_exploration(self, n: int) -> np.ndarray | None:
        """gSDE's noise matrices for n envs, (n, hidden, A), entries N(0, exp(log_std)^2); None
        for a policy without gSDE."""
        if not self.config.use_sde:
            return None
        return (self.rng.standard_normal((n, *self.std.shape), dtype=np.float32) * self.std)

    def act(self, obs: np.ndarray, deterministic: bool = False, exploration: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For (B, *obs_shape) observations: (actions, log_prob (B,), value (B,)), as
        `ActorCritic.act`: Discrete actions (B,) int64, Box actions (B, A) float32 unclipped."""
        latent, out, value = self._forward(obs)
        if self.discrete:
            shifted = out - out.max(-1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            if deterministic:
                action = log_p.argmax(-1)
            else:  # the exponential race (Gumbel-max): argmax of p / Exp(1) is distributed as p
                action = (np.exp(log_p) / self.rng.standard_exponential(log_p.shape, dtype=np.float32)).argmax(-1)
            return action.astype(np.int64), np.take_along_axis(log_p, action[:, None], -1)[:, 0], value
        std = self._action_std(latent)
        if deterministic:
            action = out
        elif self.config.use_sde:
            if exploration is None:
                raise ValueError("gSDE sampling needs the rollout's exploration matrices (sample_exploration)")
            action = out + np.einsum("bh,bha->ba", latent, exploration)
        else:
            action = out + std * self.rng.standard_normal(out.shape, dtype=np.float32)
        z = (action - out) / std
        log_prob = (-0.5 * np.square(z) - np.log(std) - np.float32(LOG_SQRT_2PI)).sum(-1)
        return action.astype(np.float32), log_prob.astype(np.float32), value

    def value(self, obs: np.ndarray) -> np.ndarray:
        """State values V(obs), shape (B,)."""
        return self._forward(obs)[2]

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """Actions as the env accepts them (Box actions clipped to the space bounds)."""
        return clip_action(self.spaces, action)


class TorchActing:
    """An `ActorCritic` (any torso, the Nature CNN included) behind `NumpyPolicy`'s interface,
    drawing from its own torch generator seeded with `seed`."""

    def __init__(self, policy: Any, seed: int = 0) -> None:
        import torch

        from learner.policy import load_numpy_state, obs_tensor
        self.torch, self._load, self._obs_tensor = torch, load_numpy_state, obs_tensor
        self.policy = policy.eval()
        self.spaces, self.config = policy.spaces, policy.config
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def cnn_precision(self) -> str | None:
        """What the policy's convolutional torso runs in (`ActorCritic.cnn_precision`)."""
        return self.policy.cnn_precision

    def load_weights(self, tensors: dict[str, np.ndarray]) -> None:
        """Take the weights of `learner.policy.numpy_state` (strictly, as torch loads them)."""
        self._load(self.policy, tensors)

    def _obs(self, obs: np.ndarray):
        return self._obs_tensor(obs, self.spaces)

    def sample_exploration(self, n: int):
        """gSDE's noise matrices for n envs (a tensor, as `act` takes them); None without gSDE."""
        return self.policy.sample_exploration(n, self.generator)

    def act(self, obs: np.ndarray, deterministic: bool = False, exploration: Any = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`ActorCritic.act` on numpy observations, numpy results."""
        with self.torch.inference_mode():
            action, log_prob, value = self.policy.act(self._obs(obs), deterministic=deterministic,
                                                      generator=self.generator, exploration=exploration)
        return action.numpy(), log_prob.numpy(), value.numpy()

    def value(self, obs: np.ndarray) -> np.ndarray:
        """State values V(obs), shape (B,)."""
        with self.torch.inference_mode():
            return self.policy.value(self._obs(obs)).numpy()

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """Actions as the env accepts them (Box actions clipped to the space bounds)."""
        return clip_action(self.spaces, action)


def acting_policy(spaces: SpacesSpec, config: PolicyConfig, seed: int,
                  cnn_precision: str = "float32") -> NumpyPolicy | TorchActing:
    """The policy a worker acts with: numpy for vector observations, torch for images, its
    convolutional torso in `cnn_precision` (a training job's, as its learner's; auto is
    resolved for this process's CPU, which may differ from the learner's device)."""
    if spaces.is_image:
        import torch
        from learner.policy import CNN_DTYPES, ActorCritic, bfloat16_warning, resolve_cnn_precision
        cpu = torch.device("cpu")
        # The choice is reported by `TorchActing.cnn_precision`, in the job's placement event.
        precision, _ = resolve_cnn_precision(cnn_precision, cpu)
        if cnn_precision == "bfloat16" and (warning := bfloat16_warning(cpu)):
            log.warning("acting: cnn_precision=bfloat16, but %s", warning)
        return TorchActing(ActorCritic(spaces, config, cnn_dtype=CNN_DTYPES[precision]).to_cnn_dtype(), seed)
    return NumpyPolicy(spaces, config, seed)
