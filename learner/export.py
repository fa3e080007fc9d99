"""A trained policy as an ONNX graph: raw observations in, the deterministic action out.

Everything between the env and the action is inside the graph: observation normalisation
(with the checkpoint's running statistics) for vector observations, the uint8 -> [0, 1] scaling
(and the channels-last -> channels-first permute) for images, and, for Box actions, the clip
to the action bounds. See docs/api.md ("ONNX export") for the inputs and outputs.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from learner.policy import ActorCritic

OPSET = 17
"""The ONNX opset of exported graphs (onnxruntime >= 1.13 runs it)."""
INPUT = "obs"


def output_names(policy: ActorCritic) -> list[str]:
    """The graph's outputs, in order: `action` first, then what the action is made from."""
    return ["action", "logits", "value"] if policy.discrete else ["action", "mean", "std", "value"]


class DeterministicPolicy(nn.Module):
    """The exported computation: (B, *obs_shape) raw observations -> the outputs of `output_names`.

    Discrete: action (B,) int64 (argmax of the logits), logits (B, n), value (B,).
    Box: action (B, *action_shape) float32 (the Gaussian mean clipped to the action bounds,
    what `ActorCritic.act(deterministic=True)` then `clip_action` give the env), mean (B, A),
    std (B, A) (the exploration std the policy trained with), value (B,).
    """

    def __init__(self, policy: ActorCritic) -> None:
        super().__init__()
        self.policy = policy
        spaces = policy.spaces
        if not policy.discrete:
            self.register_buffer("low", torch.tensor(spaces.action_low, dtype=torch.float32))
            self.register_buffer("high", torch.tensor(spaces.action_high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """See the class docstring."""
        latent, out, value = self.policy._forward(obs)
        if self.policy.discrete:
            return out.argmax(-1), out, value
        action = torch.maximum(torch.minimum(out, self.high), self.low)
        action = action.reshape((out.shape[0], *self.policy.spaces.action_shape))
        return action, out, self.policy._action_std(latent), value


def onnx_bytes(policy: ActorCritic) -> bytes:
    """The ONNX model (opset OPSET) of `policy`'s deterministic action, with a dynamic batch axis.

    The input `obs` is (batch, *obs_shape), float32 or, for images, uint8, as the env gives it.
    """
    policy = policy.eval()
    spaces = policy.spaces
    dtype = torch.uint8 if spaces.obs_dtype == "uint8" else torch.float32
    example = torch.zeros((2, *spaces.obs_shape), dtype=dtype)
    names = output_names(policy)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: no onnxscript needed, and well under a second for
        # these networks. Its deprecation warning is not for users of the export.
        warnings.simplefilter("ignore")
        torch.onnx.export(DeterministicPolicy(policy), (example,), buf, input_names=[INPUT],
                          output_names=names, opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT: {0: "batch"}, **{n: {0: "batch"} for n in names}})
    return buf.getvalue()
