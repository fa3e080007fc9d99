"""The learner's optimizers: Adam, torch's RMSprop and TensorFlow's RMSprop, on torch's foreach ops.

Not torch.optim: its `Optimizer` base imports `torch._dynamo` when an optimizer is built and
again at every `step`, and that import is on the critical path of every job's start (the
learner is the last actor ready; docs/benchmarks.md, "Start-up and exit"). The update rules
are torch.optim's own, op for op (Adam; RMSprop without momentum, not centred), which
tests/learner/test_optimizer.py checks against torch.optim, and the state dict keeps
torch.optim's layout, so checkpoints written with torch.optim's optimizers resume here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

from learner.config import A2CConfig

Rule = Literal["adam", "rmsprop", "rmsprop_tf"]

STATE_KEYS: dict[str, tuple[str, ...]] = {"adam": ("exp_avg", "exp_avg_sq"),
                                          "rmsprop": ("square_avg",), "rmsprop_tf": ("square_avg",)}
"""The per-parameter buffers of each rule, named as torch.optim names them."""

TORCH_DEFAULTS = {"weight_decay": 0, "momentum": 0, "centered": False, "amsgrad": False, "maximize": False}
"""torch.optim options these rules do not have: a saved state that used another value of any
would not continue the same rule, so loading it is refused."""


class Optimizer:
    """One parameter group updated by `rule`; the learner sets `param_groups[0]["lr"]` before
    each update (its learning-rate schedule), as it would on a torch.optim optimizer.

    - "adam": Adam with bias correction (betas 0.9, 0.999), as torch.optim.Adam.
    - "rmsprop": v = alpha v + (1 - alpha) g^2, p -= lr g / (sqrt(v) + eps), v from 0, as
      torch.optim.RMSprop.
    - "rmsprop_tf": RMSprop as TensorFlow (and OpenAI baselines' A2C) has it: v starts at 1
      and eps goes under the root, p -= lr g / sqrt(v + eps). With torch's form v starts at
      (1 - alpha) g^2, so the first steps move every parameter by about lr / sqrt(1 - alpha)
      whatever its gradient's size (10 lr for alpha 0.99); here they start at about lr g. SB3
      found the difference decisive for A2C on Atari (its RMSpropTFLike, which rl-zoo's Atari
      settings use).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], rule: Rule, lr: float, eps: float,
                 alpha: float = 0.99, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        if rule not in STATE_KEYS:
            raise ValueError(f"optimizer: unknown rule {rule!r}; one of {sorted(STATE_KEYS)}")
        self.params = list(params)
        self.rule = rule
        group: dict[str, Any] = {"lr": lr, "eps": eps}
        group.update({"betas": betas} if rule == "adam" else {"alpha": alpha})
        self.param_groups = [group]
        self.steps = [0] * len(self.params)
        """Updates each parameter has had (torch.optim counts them per parameter too: Adam's bias
        correction of a parameter starts at its first gradient)."""
        start = torch.ones_like if rule == "rmsprop_tf" else torch.zeros_like
        self.state = [{key: start(p, memory_format=torch.preserve_format) for key in STATE_KEYS[rule]}
                      for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (`set_to_none` is accepted for torch.optim's signature)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        for i in live:
            self.steps[i] += 1
        group = self.param_groups[0]
        lr, eps = group["lr"], group["eps"]
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        if self.rule == "adam":
            beta1, beta2 = group["betas"]
            exp_avg = [self.state[i]["exp_avg"] for i in live]
            exp_avg_sq = [self.state[i]["exp_avg_sq"] for i in live]
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, [(1 - beta2 ** self.steps[i]) ** 0.5 for i in live])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, exp_avg, denom, [-lr / (1 - beta1 ** self.steps[i]) for i in live])
            return
        alpha = group["alpha"]
        square_avg = [self.state[i]["square_avg"] for i in live]
        torch._foreach_mul_(square_avg, alpha)
        torch._foreach_addcmul_(square_avg, grads, grads, value=1 - alpha)
        if self.rule == "rmsprop":
            denom = torch._foreach_sqrt(square_avg)
            torch._foreach_add_(denom, eps)
        else:
            denom = torch._foreach_add(square_avg, eps)
            torch._foreach_sqrt_(denom)
        torch._foreach_addcdiv_(params, grads, denom, value=-lr)

    def state_dict(self) -> dict[str, Any]:
        """The state in torch.optim's layout: {"state": {index: {"step", buffers}}, "param_groups"}."""
        state = {i: {"step": torch.tensor(float(self.steps[i])), **{k: v.clone() for k, v in s.items()}}
                 for i, s in enumerate(self.state)}
        return {"state": state, "param_groups": [{**self.param_groups[0], "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict` of this class, or of the torch.optim optimizer of the same rule
        (one whose options keep that rule: no momentum, weight decay, amsgrad and so on)."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"optimizer state: {len(groups)} group(s) of "
                             f"{[len(g['params']) for g in groups]} parameters; this policy has one of {len(self.params)}")
        other = {k: groups[0][k] for k, default in TORCH_DEFAULTS.items() if groups[0].get(k, default) != default}
        if other:
            raise ValueError(f"optimizer state: options {other} are not those of the {self.rule} rule")
        saved = state_dict["state"]
        for i, index in enumerate(groups[0]["params"]):
            entry = saved.get(index)
            if entry is None:  # torch.optim keeps no state for a parameter never stepped
                continue
            for key in STATE_KEYS[self.rule]:
                if tuple(entry[key].shape) != tuple(self.params[i].shape):
                    raise ValueError(f"optimizer state: {key} of parameter {i} is {tuple(entry[key].shape)}, "
                                     f"the parameter {tuple(self.params[i].shape)}")
                self.state[i][key].copy_(entry[key])
            self.steps[i] = int(entry.get("step", 0))
        self.param_groups[0].update({k: v for k, v in groups[0].items() if k in self.param_groups[0]})


def make_optimizer(params: Iterable[torch.nn.Parameter], config: A2CConfig) -> Optimizer:
    """The optimizer `config.optimizer` names, over `params`, at its learning rate."""
    return Optimizer(params, config.optimizer, lr=config.learning_rate, eps=config.optimizer_eps,
                     alpha=config.rmsprop_alpha)
