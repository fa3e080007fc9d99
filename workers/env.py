"""Building gymnasium envs safely: registered ids only, explicit autoreset, described spaces."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from learner.policy import SpacesSpec


class UnknownEnvironment(ValueError):
    """The env id is not in gymnasium's registry (module paths are refused, never imported)."""


def check_env_id(env_id: str) -> None:
    """Refuse ids that are not registered; `module:Env` paths would import code, so never allowed."""
    if ":" in env_id:
        raise UnknownEnvironment(
            f"env {env_id!r} names a module path; only ids registered with gymnasium are "
            "accepted (see `a2c envs`)")
    if env_id not in gym.registry:
        raise UnknownEnvironment(
            f"env {env_id!r} is not a registered gymnasium env; see `a2c envs` for the list")


def make_vec_env(env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None
                 ) -> gym.vector.VectorEnv:
    """A synchronous vector env of `num_envs` copies that auto-resets in the same step.

    SAME_STEP mode hands back the final observation of an ended episode in `info["final_obs"]`
    and the reset observation as the next obs, so no step is ever a fake transition.
    """
    check_env_id(env_id)
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
                        **(env_kwargs or {}))


def describe_spaces(env_id: str, env_kwargs: dict[str, Any] | None = None) -> SpacesSpec:
    """The spaces of one env instance, as the policy and checkpoints record them."""
    check_env_id(env_id)
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        obs, act = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs, gym.spaces.Box):
        raise UnknownEnvironment(
            f"env {env_id!r} has a {type(obs).__name__} observation space; only Box is supported")
    if isinstance(act, gym.spaces.Discrete):
        if int(act.start) != 0:
            raise UnknownEnvironment(f"env {env_id!r}: Discrete actions must start at 0")
        return SpacesSpec(obs_shape=obs.shape, action_type="discrete", action_n=int(act.n))
    if isinstance(act, gym.spaces.Box):
        return SpacesSpec(obs_shape=obs.shape, action_type="box", action_shape=act.shape,
                          action_low=tuple(np.asarray(act.low, float).ravel().tolist()),
                          action_high=tuple(np.asarray(act.high, float).ravel().tolist()))
    raise UnknownEnvironment(
        f"env {env_id!r} has a {type(act).__name__} action space; only Discrete and Box are supported")


def env_seeds(job_seed: int, worker_index: int, num_envs: int) -> list[int]:
    """Distinct, reproducible seeds for each env of one worker, from (job seed, worker, env)."""
    seq = np.random.SeedSequence([job_seed, worker_index])
    return [int(s) for s in seq.generate_state(num_envs, dtype=np.uint32)]
