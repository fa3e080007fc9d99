"""Parameter schedules: a hyperparameter's value as a pure function of training progress."""

from __future__ import annotations

from learner.config import A2CConfig


def scheduled(kind: str, start: float, end: float, step: int, total_steps: int) -> float:
    """Value of a `constant` or `linear` schedule at env step `step` of `total_steps`."""
    if kind == "constant":
        return start
    if kind == "linear":
        progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
        return start + (end - start) * progress
    raise ValueError(f"unknown schedule {kind!r}; expected constant or linear")


def learning_rate_at(config: A2CConfig, step: int, total_steps: int) -> float:
    """The learning rate to use for the update that starts at env step `step`."""
    return scheduled(config.learning_rate_schedule, config.learning_rate,
                     config.learning_rate_final, step, total_steps)


def entropy_coef_at(config: A2CConfig, step: int, total_steps: int) -> float:
    """The entropy coefficient to use for the update that starts at env step `step`."""
    return scheduled(config.entropy_coef_schedule, config.entropy_coef,
                     config.entropy_coef_final, step, total_steps)
