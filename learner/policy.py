"""Actor-critic policy: a shared torso (MLP, or the Nature CNN for images), a categorical or
diagonal-Gaussian head, a value head."""

from __future__ import annotations

import copy
import math
import platform
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Normal

from learner.config import PolicyConfig
from learner.spaces import SpacesSpec, clip_action, policy_mismatch
from learner.normalize import RunningMeanStd


def nature_cnn(channels: int, height: int, width: int) -> nn.Sequential:
    """The DQN Nature paper's torso: (B, C, H, W) scaled images -> (B, 512) features."""
    convs = nn.Sequential(nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
                          nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        flat = convs(torch.zeros(1, channels, height, width)).shape[1]
    return nn.Sequential(*convs, nn.Linear(flat, 512), nn.ReLU())


CNN_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
"""A resolved `JobSpec.cnn_precision` -> the dtype of the convolutional torso in training
(None: float32). `resolve_cnn_precision` turns "auto" into one of these."""


def bfloat16_units(device: torch.device) -> str:
    """The bfloat16 matrix units `device` has, by name ("AMX", "AVX512-BF16", "native bfloat16"), or "".

    Only units measured faster than float32 on the Nature CNN count (docs/workloads.md): the
    learner's update took 0.51x float32's time on an Intel Xeon with AMX and 0.62x on an AMD EPYC
    with AVX512-BF16 and no AMX; with oneDNN kept to AVX-512 alone 2.1-3.2x, to AVX2 8.7-8.8x
    (both machines). The Xeon kept from its AMX but not its AVX512-BF16 took 1.5x: an Intel CPU
    with AVX512-BF16 and no AMX (Cooper Lake) may not gain, and was not measured as it is. GPUs
    count when they have native bfloat16 (torch counts emulation on pre-Ampere GPUs as support).
    Other CPU architectures (ARM) were not measured: none counted."""
    if device.type == "cuda":
        return "native bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else ""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        supported = getattr(torch.cpu, probe, None)
        if supported is not None and supported():
            return name
    return ""


def resolve_cnn_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """A job's `cnn_precision` as a process on `device` runs it, and why, e.g.
    ("bfloat16", "cnn_precision auto: this CPU has AMX"). auto: bfloat16 where `bfloat16_units`
    finds units, else float32; float32 and bfloat16 stand as asked."""
    if precision != "auto":
        return precision, f"cnn_precision {precision}"
    units = bfloat16_units(device)
    where = "this GPU" if device.type == "cuda" else "this CPU"
    if units:
        return "bfloat16", f"cnn_precision auto: {where} has {units}"
    return "float32", f"cnn_precision auto: {where} has no bfloat16 units measured faster than float32"


def bfloat16_warning(device: torch.device) -> str:
    """Why bfloat16 convolutions asked for would be slow on `device`, or "" when it has units
    for them (`bfloat16_units`) or was not measured (CPUs other than x86)."""
    if bfloat16_units(device):
        return ""
    if device.type == "cuda":
        return "this GPU has no bfloat16 units"
    if platform.machine().lower() in ("x86_64", "amd64"):
        return "this CPU has neither AMX nor AVX512-BF16, so they run slower than float32: use float32"
    return ""

ACTIVATIONS = {"tanh": (nn.Tanh, torch.tanh), "relu": (nn.ReLU, torch.relu)}
"""`PolicyConfig.activation` -> (the torso's module between layers, the same as a function)."""


class ActorCritic(nn.Module):
    """The A2C policy. `act` is for collection, `evaluate_actions` for the loss, as in prt_rl."""

    def __init__(self, spaces: SpacesSpec, config: PolicyConfig, cnn_dtype: torch.dtype | None = None) -> None:
        """`cnn_dtype` (a job's `cnn_precision`, from `CNN_DTYPES`): run the convolutional torso
        in this dtype, under torch's autocast while the weights are float32 (the learner), or
        with weights stored in it after `to_cnn_dtype` (rollout workers); its features are cast
        back to float32. None: float32."""
        super().__init__()
        self.cnn_dtype = cnn_dtype
        self.spaces = spaces
        self.config = config
        mismatch = policy_mismatch(spaces, config)
        if mismatch is not None:
            raise ValueError(f"{mismatch[0]}: {mismatch[1]}")
        act_cls, self._activation = ACTIVATIONS[config.activation]
        self.image = spaces.is_image
        self.obs_norm = RunningMeanStd((spaces.obs_dim,)) if config.normalize_observations else None
        if self.image:
            c, h, w = spaces.obs_shape
            self.torso = nature_cnn(*((w, c, h) if spaces.channels_last else (c, h, w)))
            width = 512
        else:
            layers: list[nn.Module] = []
            width = spaces.obs_dim
            for hidden in config.hidden_sizes:
                layers += [nn.Linear(width, hidden), act_cls()]
                width = hidden
            self.torso = nn.Sequential(*layers)
        # A separate value torso keeps large value-loss gradients out of the policy features.
        self.value_torso = None if config.share_torso else copy.deepcopy(self.torso)
        self.action_head = nn.Linear(width, spaces.action_dim)
        self.value_head = nn.Linear(width, 1)
        self.discrete = spaces.action_type == "discrete"
        if not self.discrete:
            # gSDE: one std per (hidden feature, action component); else one per component.
            shape = (width, spaces.action_dim) if config.use_sde else (spaces.action_dim,)
            self.log_std = nn.Parameter(torch.full(shape, config.log_std_init))
        # Orthogonal init as in OpenAI baselines / SB3 (and rl-zoo's ortho_init, convolutions
        # included): small policy logits keep early entropy high.
        for module in [*self.torso, *(self.value_torso or [])]:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.action_head.weight, gain=0.01)
        nn.init.zeros_(self.action_head.bias)
        nn.init.orthogonal_(self.value_head.weight, gain=1.0)
        nn.init.zeros_(self.value_head.bias)
        if self.image:  # see `_scaled`: the convolutions run channels-last
            for torso in (self.torso, self.value_torso):
                if torso is not None:
                    torso.to(memory_format=torch.channels_last)

    def _forward(self, obs: torch.Tensor, with_value: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """For a batch of B observations: the policy's last hidden features (B, hidden), the
        action head's outputs (B, action_dim), logits or Gaussian means, and values (B,) (None
        unless `with_value`)."""
        if self.image:
            obs = self._scaled(obs)
            features = self._cnn
        else:
            obs = obs.reshape(obs.shape[0], -1)
            if self.obs_norm is not None:
                obs = self.obs_norm(obs)
            features = self._mlp
        latent = features(self.torso, obs)
        out = F.linear(latent, self.action_head.weight, self.action_head.bias)
        if not with_value:
            return latent, out, None
        value_latent = latent if self.value_torso is None else features(self.value_torso, obs)
        return latent, out, F.linear(value_latent, self.value_head.weight, self.value_head.bias).squeeze(-1)

    @property
    def cnn_precision(self) -> str | None:
        """What the convolutional torso runs in ("float32" or "bfloat16"), None for an MLP policy."""
        if not self.image:
            return None
        return "bfloat16" if self.cnn_dtype is torch.bfloat16 else "float32"

    def _scaled(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, *obs_shape) uint8 images -> (B, C, H, W) in [0, 1], float32 or `cnn_dtype`, made
        on the input's device: images travel as uint8 (4x fewer bytes) up to here. The learner
        and the workers scale alike, so both run the same function in either dtype.

        The result is stored channels-last (torch.channels_last), as the torso's convolution
        weights are: the layout torch's oneDNN CPU convolutions are written for, faster here
        than (B, C, H, W)-contiguous tensors (docs/workloads.md, "Channels-last convolutions").
        The dtype is converted in the input's own layout first, then the layout changed: for
        16 stacked Atari frames in bfloat16 0.34 ms against 0.66 ms for one conversion into
        channels-last (which walks the uint8 input out of order; AMD EPYC, one thread)."""
        if self.spaces.channels_last:
            obs = obs.permute(0, 3, 1, 2)
        dtype = self.cnn_dtype or torch.float32  # no float32 copy of the batch for bfloat16
        # copy=True: the in-place scaling never writes into the caller's tensor, even one already
        # in this dtype and layout (a uint8 batch is copied by the conversion anyway).
        return obs.to(dtype, copy=True).mul_(1 / 255).contiguous(memory_format=torch.channels_last)

    def _cnn(self, torso: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) scaled images -> (B, 512) float32 features; the convolutions dominate the
        cost, so the modules are called as they are: in `cnn_dtype` when it is set, under
        autocast while the weights are float32."""
        if self.cnn_dtype is None:
            return torso(x)
        if torso[0].weight.dtype == self.cnn_dtype:  # stored in it (`to_cnn_dtype`)
            return torso(x).float()
        with torch.autocast(x.device.type, dtype=self.cnn_dtype):
            return torso(x).float()

    def to_cnn_dtype(self) -> "ActorCritic":
        """Store the convolutional torso's weights in `cnn_dtype`, for acting only (no gradients):
        autocast would convert them at every call, which costs a worker's forward pass on a few
        frames about what it saves. Loading float32 weights afterwards converts them."""
        if self.cnn_dtype is not None and self.image:
            for torso in (self.torso, self.value_torso):
                if torso is not None:
                    torso.to(self.cnn_dtype)
        return self

    def _mlp(self, torso: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """(B, obs_dim) -> (B, hidden): the torso's Linear layers, each followed by the activation.

        The same as `torso(x)` for the torsos `__init__` builds (Linear, activation, Linear,
        activation, ...), without nn.Module's per-call overhead, a good part of the cost on the
        few observations of a served `act` request. (Rollout workers of MLP policies act with
        `learner.acting.NumpyPolicy`, this network in numpy.)
        """
        for layer in torso:
            if isinstance(layer, nn.Linear):
                x = self._activation(F.linear(x, layer.weight, layer.bias))
        return x

    def _action_std(self, latent: torch.Tensor) -> torch.Tensor:
        """The Gaussian head's std for each of B samples, (B, action_dim).

        Without gSDE, exp(log_std) for every sample. With it, the std of the noise
        `latent @ E` when E's entries are N(0, exp(log_std)^2): sqrt(latent^2 @ exp(log_std)^2),
        the features detached (the noise does not train them), as in SB3's default.
        """
        if not self.config.use_sde:
            return self.log_std.exp().expand(latent.shape[0], -1)
        return torch.sqrt(latent.detach().square() @ self.log_std.exp().square() + 1e-6)

    def _heads(self, obs: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """Action distribution over a batch of B observations, and values of shape (B,)."""
        latent, out, value = self._forward(obs)
        if self.discrete:
            dist: torch.distributions.Distribution = Categorical(logits=out, validate_args=False)
        else:
            dist = Normal(out, self._action_std(latent), validate_args=False)
        return dist, value

    def _log_prob(self, dist: torch.distributions.Distribution, action: torch.Tensor) -> torch.Tensor:
        """Log-probability of (B,) or (B, A) actions, summed over action components: (B,)."""
        if self.discrete:
            return dist.log_prob(action.long())
        return dist.log_prob(action).sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None, exploration: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions for (B, *obs_shape) observations: (action, log_prob (B,), value (B,)).

        Sampling draws from `generator` when given (reproducible per worker); with gSDE the
        noise is `latent @ exploration[b]` for sample b instead, `exploration` being
        `sample_exploration(B)` of the rollout. Box actions are returned unclipped (their
        log-prob is of the sampled value); clip them with `clip_action` only when sending them
        to the env. The same distributions as `evaluate_actions`, computed without
        torch.distributions objects, whose construction cost more than the network on a few
        observations (image policies' rollout workers and served requests call this per step).
        """
        latent, out, value = self._forward(obs)
        if self.discrete:
            log_p = torch.log_softmax(out, -1)
            if deterministic:
                action = log_p.argmax(-1)
            else:
                # torch.multinomial's own draw for one sample (the same actions from the same
                # generator), without its checks: 30 -> 12 us. Where multinomial raised on NaN
                # probabilities, this returns a NaN log-prob, as Box actions do, and the
                # learner skips the update as non-finite.
                probs = log_p.exp()
                action = (probs / torch.empty_like(probs).exponential_(generator=generator)).argmax(-1)
            return action, log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1), value
        std = self._action_std(latent)
        if deterministic:
            action = out
        elif self.config.use_sde:
            if exploration is None:
                raise ValueError("gSDE sampling needs the rollout's exploration matrices (sample_exploration)")
            action = out + torch.bmm(latent.unsqueeze(1), exploration).squeeze(1)
        else:
            action = out + std * torch.randn(out.shape, generator=generator, dtype=out.dtype)
        z = (action - out) / std
        log_prob = (-0.5 * z.square() - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return action, log_prob, value

    @torch.no_grad()
    def sample_exploration(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """gSDE's noise matrices for n envs, (n, hidden, action_dim), with N(0, exp(log_std)^2)
        entries; None for a policy without gSDE, whose `act` needs none. A worker draws them at
        the start of each rollout: for its T steps, each env's exploration noise is then a fixed
        linear function of its state's features."""
        if not self.config.use_sde:
            return None
        std = self.log_std.exp()
        return torch.randn((n, *std.shape), generator=generator, dtype=std.dtype) * std

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values V(obs), shape (B,)."""
        return self._heads(obs)[1]

    def evaluate_actions(self, obs: torch.Tensor, action: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable (value, log_prob, entropy), each of shape (B,), for B stored actions."""
        dist, value = self._heads(obs)
        entropy = dist.entropy() if self.discrete else dist.entropy().sum(-1)
        return value, self._log_prob(dist, action), entropy

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """Actions as the env accepts them: Box actions clipped to the space bounds."""
        return clip_action(self.spaces, action)


def shape_of(spaces: SpacesSpec, config: PolicyConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of the state dict the policy for `spaces` and `config` has, found without
    allocating it: the policy is built on torch's meta device (no memory, no init work)."""
    with torch.device("meta"):
        policy = ActorCritic(spaces, config)
    return {name: tuple(t.shape) for name, t in policy.state_dict().items()}


# Tensors made here from read-only arrays (Ray's object store hands those out: a worker's weights,
# the learner's rollouts) are only read, so torch's warning that they could be written is muted,
# for this module only. Set once at import: a `catch_warnings` block per call would reset every
# module's record of the warnings already shown, which would then be printed again.
warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning, module=__name__)


def obs_tensor(obs: np.ndarray, spaces: SpacesSpec) -> torch.Tensor:
    """A batch of observations from an env as the policy takes it: uint8 images as they are
    (no copy), anything else as float32 (a copy only when the env's dtype differs)."""
    return torch.from_numpy(np.asarray(obs, dtype=np.uint8 if spaces.obs_dtype == "uint8" else np.float32))


def numpy_state(policy: nn.Module) -> dict[str, np.ndarray]:
    """The policy's weights as contiguous numpy arrays (what goes into the object store)."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in policy.state_dict().items()}


def load_numpy_state(policy: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load weights produced by `numpy_state` (shapes and names must match exactly).

    The arrays are viewed, not copied, and `load_state_dict` copies them into the policy's own
    tensors, once. They may be read-only (a worker's weights are views of Ray's object store);
    nothing writes to them, and torch's warning that a tensor made from one could be is muted
    for this module (above `obs_tensor`)."""
    views = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    policy.load_state_dict(views, strict=True)
