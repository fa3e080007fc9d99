"""Running mean and variance of a stream of batches, for observation and reward normalisation."""

from __future__ import annotations

import torch
from torch import nn

from learner.config import NORMALIZE_CLIP, NORMALIZE_EPS


class RunningMeanStd(nn.Module):
    """Mean and variance of every sample seen so far, as module buffers (saved with the weights).

    `update` merges a batch with the parallel-variance formula of Chan et al. (as SB3's
    `RunningMeanStd`); `forward` maps x to clip((x - mean) / sqrt(var + eps)). Buffers are
    float64 so that millions of samples do not drift; outputs take the input's dtype.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = NORMALIZE_CLIP, eps: float = NORMALIZE_EPS) -> None:
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # A small prior count, as SB3: the first batch dominates without dividing by zero.
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        """Merge a (B, *shape) batch into the statistics."""
        batch = batch.to(torch.float64)
        b_mean, b_var, b_count = batch.mean(0), batch.var(0, unbiased=False), batch.shape[0]
        total = self.count + b_count
        delta = b_mean - self.mean
        self.mean += delta * b_count / total
        self.var.copy_((self.var * self.count + b_var * b_count
                        + delta.square() * self.count * b_count / total) / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *shape) inputs normalised to zero mean, unit variance, clipped to +-clip."""
        out = (x - self.mean) / torch.sqrt(self.var + self.eps)
        return out.clamp(-self.clip, self.clip).to(x.dtype)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *shape) x divided by the running std (no centring), clipped: SB3's reward
        normalisation."""
        return (x / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip).to(x.dtype)
