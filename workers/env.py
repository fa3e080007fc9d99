"""Building gymnasium envs safely: registered ids only, explicit autoreset, described spaces."""

from __future__ import annotations

import functools
import importlib
import json
import re
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode

from learner.spaces import SpacesSpec


GAME_REWARD = "game_reward"
"""`info` key of a vector env whose rewards to the learner are not the game's (Atari's are
clipped): the raw (N,) rewards, which reported episode returns add up instead."""
GAME_OVER = "game_over"
"""`info` key of a vector env whose terminations to the learner are not the ends of episodes
(Atari's end at each lost life): the (N,) envs whose whole game ended, where reported episodes
end instead."""

EXTRAS = {"ale_py": "atari", "mujoco": "mujoco"}
"""Module an env family needs -> the extra of this package that installs it."""
INSTALL = {"Box2D": 'pip install "gymnasium[box2d]"'}
"""Module an env family needs -> the command that installs it, where no extra of this package does."""


class UnknownEnvironment(ValueError):
    """The env id is not in gymnasium's registry (module paths are refused, never imported)."""


@functools.cache
def register_optional_envs() -> tuple[str, ...]:
    """Register the ids of installed env packages that gymnasium does not list itself (ale-py's
    Atari games); returns the extras that are missing. Done once, on first need: importing
    ale-py takes time that jobs on other envs should not pay."""
    try:
        import ale_py
    except ImportError:
        return ("atari",)
    gym.register_envs(ale_py)
    return ()


def _needed_module(env_id: str) -> str | None:
    """The optional module a registered id's env is made with (ale_py, mujoco), if any."""
    entry = gym.registry[env_id].entry_point
    if not isinstance(entry, str):
        return None
    if entry.startswith("ale_py."):
        return "ale_py"
    if entry.startswith("gymnasium.envs.mujoco."):
        return "mujoco"
    if entry.startswith("gymnasium.envs.box2d."):
        return "Box2D"
    return None


def _install_hint(module: str) -> str:
    return INSTALL.get(module) or f"pip install 'a2c-service[{EXTRAS[module]}]'"


def similar_env_ids(env_id: str, n: int = 3) -> list[str]:
    """Registered ids close to a mistyped one: the same id in another case first, then
    difflib's closest matches (case-insensitive)."""
    import difflib
    by_lower = {k.lower(): k for k in gym.registry if ":" not in k}
    wanted = env_id.lower()
    if wanted in by_lower:
        return [by_lower[wanted]]
    return [by_lower[k] for k in difflib.get_close_matches(wanted, list(by_lower), n=n, cutoff=0.75)]


def check_env_id(env_id: str) -> None:
    """Refuse ids that are not registered, or whose env package is not installed (naming the pip
    command that installs it); `module:Env` paths would import code, so never allowed."""
    if ":" in env_id:
        raise UnknownEnvironment(
            f"env {env_id!r} names a module path; only ids registered with gymnasium are "
            "accepted (see `a2c envs`)")
    missing = register_optional_envs() if env_id not in gym.registry else ()
    if env_id not in gym.registry:
        hint = (f" (Atari ids need ale-py, which is not installed: {_install_hint('ale_py')})"
                if "atari" in missing else "")
        close = similar_env_ids(env_id)
        guess = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UnknownEnvironment(
            f"env {env_id!r} is not a registered gymnasium env{guess}; see `a2c envs` for the list{hint}")
    module = _needed_module(env_id)
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError:
            raise UnknownEnvironment(f"env {env_id!r} needs the {module} package, which is not "
                                     f"installed: {_install_hint(module)}") from None


DEPRECATED_COMPILER_ATTRIBUTE = re.compile(r"compiler attribute '\w+' is deprecated")
"""MuJoCo's notice about a deprecated attribute in a model file's <compiler> element, such as
`settotalmass` in gymnasium's own half_cheetah.xml: about gymnasium's assets, nothing a user
can act on, and printed by MuJoCo for every env built (each worker's envs, each evaluation's)."""


def _mujoco_warning(message: str) -> None:
    """MuJoCo's warning handler: notices about deprecated compiler attributes are dropped, any
    other warning goes to Python's `warnings` (shown once per distinct message and process by
    the default filter, and filterable like any other)."""
    if not DEPRECATED_COMPILER_ATTRIBUTE.match(message):
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=1)


def prepare_mujoco(env_id: str) -> None:
    """Before building a MuJoCo env in this process: install `_mujoco_warning` as MuJoCo's
    warning handler unless the process already has one (ours, or a library's). MuJoCo's own
    handler prints every warning to stderr, which Ray forwards from every worker, and appends it
    to MUJOCO_LOG.TXT in the working directory. Other envs are left alone; a missing MuJoCo was
    refused by `check_env_id`."""
    if _needed_module(env_id) != "mujoco":
        return
    import mujoco  # here: only MuJoCo envs pay for the import
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


class SameStepCartPoleVectorEnv(CartPoleVectorEnv):
    """gymnasium's batched CartPole (its `vector_entry_point`) with SAME_STEP auto-reset.

    The batched env only knows NEXT_STEP mode, whose step after an episode end ignores the
    action and pays reward 0: the fake transition this project never trains on. Here an ended
    env is reset within the step that ended it, and its final observation goes to
    `info["final_obs"]` (an object array, None where not done), exactly as SyncVectorEnv does
    in SAME_STEP mode. The physics is the parent's; one numpy step serves all N envs.
    """

    metadata = {**CartPoleVectorEnv.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """Reset all N envs; a list of per-env seeds (SyncVectorEnv's form) seeds the one
        generator that all N envs share here from its first entry."""
        return super().reset(seed=seed[0] if isinstance(seed, (list, tuple)) else seed, options=options)

    def step(self, action):
        """Step all N envs with (N,) int actions; (obs (N, 4), reward, terminated, truncated
        (N,) each, info)."""
        obs, reward, terminated, truncated, info = super().step(action)
        done = self.prev_done  # terminated | truncated, as the parent just computed
        if done.any():
            final = np.empty(self.num_envs, dtype=object)
            for i in np.flatnonzero(done):
                final[i] = obs[i]
            info = {"final_obs": final, "_final_obs": done.copy()}
            self.state[:, done] = self.np_random.uniform(low=self.low, high=self.high, size=(4, done.sum()))
            self.steps[done] = 0
            self.prev_done = np.zeros_like(done)  # so the parent's NEXT_STEP reset never fires
            obs = self.state.T.astype(np.float32)
        return obs, reward, terminated, truncated, info


BATCHED = {CartPoleVectorEnv: (SameStepCartPoleVectorEnv, {"sutton_barto_reward", "max_episode_steps"})}
"""vector_entry_point class -> (its SAME_STEP adapter, the env_kwargs the adapter takes). Other
envs, and jobs whose env_kwargs the adapter does not take (render_mode, disable_env_checker,
...), use a SyncVectorEnv of single envs."""


def make_vec_env(env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None,
                 training: bool = True) -> gym.vector.VectorEnv:
    """A vector env of `num_envs` copies that auto-resets in the same step.

    SAME_STEP mode hands back the final observation of an ended episode in `info["final_obs"]`
    and the reset observation as the next obs, so no step is ever a fake transition. Atari ids
    get the DeepMind preprocessing in ale-py's vector env, and the learner's view of the games
    when `training` (see workers.atari). Envs whose batched
    `vector_entry_point` has an adapter in BATCHED (CartPole) use it; the rest are a
    SyncVectorEnv of single envs.
    """
    from workers.atari import is_atari, make_atari_vec_env

    check_env_id(env_id)
    if is_atari(env_id):
        return make_atari_vec_env(env_id, num_envs, env_kwargs, training=training)
    prepare_mujoco(env_id)
    spec, env_kwargs = gym.spec(env_id), env_kwargs or {}
    entry = spec.vector_entry_point
    batched, takes = BATCHED.get(gym.envs.registration.load_env_creator(entry) if isinstance(entry, str)
                                 else None, (None, set()))
    kwargs = {"max_episode_steps": spec.max_episode_steps, **spec.kwargs, **env_kwargs}
    if batched is not None and set(kwargs) <= takes:
        return batched(num_envs=num_envs, **kwargs)
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
                        **env_kwargs)


def describe_spaces(env_id: str, env_kwargs: dict[str, Any] | None = None) -> SpacesSpec:
    """The spaces of one env instance, as the policy and checkpoints record them (for Atari
    ids, of the preprocessed env that workers build). Made once per (id, kwargs) and process:
    a job's checks and its training loop ask for them in turn."""
    check_env_id(env_id)
    return _describe_spaces(env_id, json.dumps(env_kwargs or {}, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _describe_spaces(env_id: str, kwargs_json: str) -> SpacesSpec:
    """`describe_spaces`, for kwargs given as JSON (hashable); errors are not cached."""
    from workers.atari import is_atari

    env_kwargs = json.loads(kwargs_json)
    if is_atari(env_id):
        env = make_vec_env(env_id, 1, env_kwargs)
        obs, act = env.single_observation_space, env.single_action_space
        env.close()
    else:
        prepare_mujoco(env_id)
        env = gym.make(env_id, **(env_kwargs or {}))
        try:
            obs, act = env.observation_space, env.action_space
        finally:
            env.close()
        make_vec_env(env_id, 1, env_kwargs).close()  # what workers build must take the kwargs too
    if not isinstance(obs, gym.spaces.Box):
        raise UnknownEnvironment(
            f"env {env_id!r} has a {type(obs).__name__} observation space; only Box is supported")
    # uint8 observations (images) travel as they are; the policy scales them on its device.
    obs_dtype = "uint8" if obs.dtype == np.uint8 else "float32"
    if isinstance(act, gym.spaces.Discrete):
        if int(act.start) != 0:
            raise UnknownEnvironment(f"env {env_id!r}: Discrete actions must start at 0")
        return SpacesSpec(obs_shape=obs.shape, obs_dtype=obs_dtype, action_type="discrete",
                          action_n=int(act.n))
    if isinstance(act, gym.spaces.Box):
        return SpacesSpec(obs_shape=obs.shape, obs_dtype=obs_dtype, action_type="box", action_shape=act.shape,
                          action_low=tuple(np.asarray(act.low, float).ravel().tolist()),
                          action_high=tuple(np.asarray(act.high, float).ravel().tolist()))
    raise UnknownEnvironment(
        f"env {env_id!r} has a {type(act).__name__} action space; only Discrete and Box are supported")


def env_seeds(job_seed: int, worker_index: int, num_envs: int) -> list[int]:
    """Distinct, reproducible seeds for each env of one worker, from (job seed, worker, env)."""
    seq = np.random.SeedSequence([job_seed, worker_index])
    return [int(s) for s in seq.generate_state(num_envs, dtype=np.uint32)]
