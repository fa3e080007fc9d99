"""The warm learner (see `service.run.warm`), in a module of its own: it imports torch, and a
Ray actor's process imports the module of its class, which for warm rollout workers of MLP
policies must stay free of torch."""

from __future__ import annotations

from typing import Any

from learner.learner import Learner


class WarmLearner(Learner):
    """A Learner process waiting for its job; `configure` takes Learner's arguments."""

    def __init__(self) -> None:  # the imports are done: this module imported learner.learner
        pass

    def configure(self, *args: Any) -> None:
        """Become the job's learner (what `Learner(*args)` would be)."""
        Learner.__init__(self, *args)
