"""What a policy needs to know of an env's spaces (`SpacesSpec`), and whether a PolicyConfig
can make a policy for them (`policy_mismatch`). Free of torch, so that a job spec is checked
(service/run/spec.py) before torch is imported."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from learner.config import PolicyConfig


class SpacesSpec(BaseModel):
    """What the policy needs to know of an env's spaces; JSON-able, stored in checkpoints."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    obs_shape: tuple[int, ...]
    obs_dtype: Literal["float32", "uint8"] = "float32"
    """How workers store and send observations. uint8 (images, e.g. Atari frames) stay uint8
    up to the policy, which scales them to [0, 1] on its own device."""
    action_type: Literal["discrete", "box"]
    action_n: int | None = None
    """Number of actions for a Discrete action space."""
    action_shape: tuple[int, ...] | None = None
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None

    @property
    def obs_dim(self) -> int:
        """Length of the flattened observation."""
        return int(np.prod(self.obs_shape))

    @property
    def action_dim(self) -> int:
        """Logits for Discrete, action components for Box."""
        return self.action_n if self.action_type == "discrete" else int(np.prod(self.action_shape))

    @property
    def is_image(self) -> bool:
        """uint8 observations of 3 dimensions: stacked frames, (C, H, W) or (H, W, C)."""
        return self.obs_dtype == "uint8" and len(self.obs_shape) == 3

    @property
    def channels_last(self) -> bool:
        """An image's channels are its last axis (the smallest one, as SB3 decides)."""
        return self.is_image and self.obs_shape[-1] < self.obs_shape[0]


def policy_mismatch(spaces: SpacesSpec, config: PolicyConfig) -> tuple[str, str] | None:
    """(field, message) when `config` cannot make a policy for these spaces, else None."""
    if config.use_sde and spaces.action_type != "box":
        return "policy.use_sde", (f"gSDE explores continuous actions; these are {spaces.action_type}: "
                                  "set use_sde to false")
    shape = f"{spaces.obs_dtype} {spaces.obs_shape}"
    if config.torso == "mlp" and spaces.is_image:
        return "policy.torso", (f"image observations ({shape}) need a convolutional torso: "
                                "use auto or nature_cnn, not mlp")
    if config.torso == "nature_cnn" and not spaces.is_image:
        return "policy.torso", (f"nature_cnn takes images (uint8, 3 dimensions); these observations "
                                f"are {shape}: use auto or mlp")
    if config.normalize_observations and spaces.is_image:
        return "policy.normalize_observations", (f"image observations ({shape}) are scaled by 1/255, "
                                                 "not normalised: set normalize_observations to false")
    if spaces.is_image and min(spaces.obs_shape[:2] if spaces.channels_last else spaces.obs_shape[1:]) < 36:
        return "policy.torso", (f"images of {spaces.obs_shape} are too small for the Nature CNN "
                                "(36x36 at least)")
    return None


def clip_action(spaces: SpacesSpec, action: np.ndarray) -> np.ndarray:
    """A batch of policy actions as the env accepts them: Box actions (B, A) clipped to the
    space's bounds and shaped (B, *action_shape); Discrete actions (B,) as they are."""
    if spaces.action_type == "discrete":
        return action
    return np.clip(action, spaces.action_low, spaces.action_high).reshape((action.shape[0], *spaces.action_shape))
