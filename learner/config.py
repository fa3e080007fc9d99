"""Immutable, validated configuration of the A2C algorithm and its policy network."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FrozenModel(BaseModel):
    """Base for config models: immutable, and unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class A2CConfig(FrozenModel):
    """Hyperparameters of A2C. Field names and defaults are those of prt_rl's `A2CConfig`."""

    steps_per_batch: int = Field(2048, ge=1)
    """Env steps collected per update, over all workers and envs (workers x envs x T)."""
    mini_batch_size: int | None = Field(32, ge=1)
    """Samples per gradient step. The batch is split into steps_per_batch / mini_batch_size
    sequential optimizer steps, as prt_rl does; only the first is strictly on-policy. `null` (or
    `--mini-batch-size full`) takes one full-batch step per rollout: classic A2C, as SB3 does."""
    learning_rate: float = Field(3e-4, gt=0, le=1)
    """Optimizer step size (the start value when `learning_rate_schedule` is linear)."""
    optimizer: Literal["adam", "rmsprop", "rmsprop_tf"] = "adam"
    """adam (prt_rl's) or rmsprop: torch's RMSprop, as SB3's A2C uses by default (its
    `use_rms_prop`), with `rmsprop_alpha` and `optimizer_eps`. rmsprop_tf: RMSprop as
    TensorFlow has it, which OpenAI baselines' A2C used and rl-zoo's Atari settings keep (SB3's
    RMSpropTFLike): the mean of squared gradients starts at 1, not 0, and `optimizer_eps` is
    added under the square root, so early and rare gradients take small steps. A resumed job
    keeps the optimizer of its checkpoint (whose state it continues)."""
    optimizer_eps: float = Field(1e-5, gt=0, le=1)
    """Added to the denominator of the update for stability, by Adam and RMSprop alike
    (outside the square root, as torch does; inside it for rmsprop_tf); 1e-5 is SB3's
    `rms_prop_eps`."""
    rmsprop_alpha: float = Field(0.99, gt=0, lt=1)
    """RMSprop's smoothing constant of the running mean of squared gradients (SB3's 0.99)."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount factor."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE lambda: 1 is Monte Carlo, 0 is TD(0)."""
    entropy_coef: float = Field(0.01, ge=0)
    """Weight of the entropy bonus (the start value when `entropy_coef_schedule` is linear)."""
    value_coef: float = Field(0.5, ge=0)
    """Weight of the value-function MSE loss."""
    max_grad_norm: float = Field(0.5, gt=0)
    """Gradients are clipped to this global L2 norm."""
    normalize_advantages: bool = False
    """Normalise advantages to zero mean and unit std over the whole batch (before any split)."""
    normalize_rewards: bool = False
    """Divide rewards by the running std of each env's discounted return (clipped to +-10)
    before GAE, as SB3's VecNormalize does; reported returns stay raw."""
    learning_rate_schedule: Literal["constant", "linear"] = "constant"
    """`linear` anneals learning_rate to `learning_rate_final` at total_steps."""
    learning_rate_final: float = Field(0.0, ge=0)
    """End value of a linear learning-rate schedule."""
    entropy_coef_schedule: Literal["constant", "linear"] = "constant"
    """`linear` anneals entropy_coef to `entropy_coef_final` at total_steps."""
    entropy_coef_final: float = Field(0.0, ge=0)
    """End value of a linear entropy-coefficient schedule."""

    @model_validator(mode="after")
    def _mini_batch_fits(self) -> "A2CConfig":
        if self.mini_batch_size is not None and self.mini_batch_size > self.steps_per_batch:
            raise ValueError(
                f"mini_batch_size ({self.mini_batch_size}) must not exceed steps_per_batch "
                f"({self.steps_per_batch}); use null for one full-batch step"
            )
        return self


NORMALIZE_CLIP = 10.0
"""Normalised observations and rewards are clipped to +-NORMALIZE_CLIP (SB3's VecNormalize)."""
NORMALIZE_EPS = 1e-8
"""Added to running variances before their square root (SB3's VecNormalize)."""


class PolicyConfig(FrozenModel):
    """Shape of the actor-critic network: a shared torso, an action head and a value head."""

    torso: Literal["auto", "mlp", "nature_cnn"] = "auto"
    """`mlp`: fully connected layers (`hidden_sizes`, `activation`) on the flattened
    observation. `nature_cnn`: the DQN Nature paper's convolutions (32 8x8 filters, stride 4;
    64 4x4, stride 2; 64 3x3, stride 1; then 512 units, all ReLU) on image observations, as
    SB3's CnnPolicy; `hidden_sizes` and `activation` do not apply to it. `auto`: nature_cnn
    for image observations (uint8, 3 dimensions), mlp for the rest."""
    hidden_sizes: tuple[int, ...] = Field((64, 64), min_length=1, max_length=16)
    """Widths of the MLP torso's hidden layers (at most 16 layers of at most 4096 units; the
    service also caps the policy's parameter count)."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Non-linearity between the MLP torso's layers."""
    share_torso: bool = True
    """One torso for the action and value heads (prt_rl's layout). False gives the value head
    its own torso of the same shape (SB3's default for A2C), which keeps value-loss gradients
    out of the policy's features."""
    log_std_init: float = Field(0.0, ge=-5, le=2)
    """Initial log standard deviation of the Gaussian head (Box action spaces)."""
    use_sde: bool = False
    """Generalized state-dependent exploration (gSDE, Raffin et al. 2021; Box action spaces
    only): the exploration noise is the policy's last hidden features times a matrix drawn
    once per rollout for each env, so it changes smoothly along a trajectory instead of every
    step. Its std is then one value per (hidden feature, action component), starting at
    exp(log_std_init)."""
    normalize_observations: bool = False
    """Feed the network observations normalised by their running mean and std (clipped to
    +-10), as SB3's VecNormalize does. The statistics are buffers of the policy: the learner
    updates them from each batch, workers get them with the weights, checkpoints keep them.
    Not for image observations, which the policy scales by 1/255."""

    @model_validator(mode="after")
    def _positive_widths(self) -> "PolicyConfig":
        if any(h < 1 or h > 4096 for h in self.hidden_sizes):
            raise ValueError("hidden_sizes entries must lie in 1..4096")
        return self
