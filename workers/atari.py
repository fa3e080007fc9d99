"""Atari envs from ale-py with the DeepMind preprocessing, in ale-py's threaded vector env.

Every Atari id (`ALE/*-v5`, `*NoFrameskip-v4`, `*-v4`, `*-v0`) gets the same observation and
action pipeline, with no flags: up to 30 no-ops at reset, FIRE at reset in games that have it,
each action repeated for 4 frames with the max over the last 2, 84x84 grayscale, a stack of the
last 4 frames as a (4, 84, 84) uint8 observation, and a time limit of 108,000 frames (27,000
agent steps). The id's own frame skip is replaced by that one; its sticky actions are kept
(`repeat_action_probability`: 0.25 for `ALE/*-v5` and `*-v0`, 0 for `*NoFrameskip-v4` and
`*-v4`).

Training and evaluation differ in two ways only. For the learner, each lost life ends an
episode (`terminated`, the game goes on) and rewards are clipped to their sign. Reported
returns stay those of full games with raw rewards: `EpisodicLife` hands the raw reward and
the real end of each game to the worker in `info` (see `workers.env.GAME_REWARD`). Evaluation
plays full games with raw rewards.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from workers.env import GAME_OVER, GAME_REWARD

ENTRY_POINT = "ale_py.env:AtariEnv"
"""What every Atari id of ale-py's registry is made by."""
SETTINGS = ("repeat_action_probability", "full_action_space", "max_num_frames_per_episode")
"""The id's settings (and the env_kwargs) that carry over to the vector env."""
PREPROCESSING = {"frameskip": 4, "maxpool": True, "noop_max": 30, "img_height": 84, "img_width": 84,
                 "grayscale": True, "stack_num": 4, "use_fire_reset": True}
"""The DeepMind preprocessing that every Atari id gets (ale-py's AtariVectorEnv arguments)."""


def is_atari(env_id: str) -> bool:
    """Whether a registered id is one of ale-py's Atari games."""
    return gym.spec(env_id).entry_point == ENTRY_POINT


def atari_settings(env_id: str, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The game and its settings for an Atari id, env_kwargs overriding the id's own.

    Raises ValueError naming any env_kwargs that the preprocessed env cannot take (an
    `obs_type`, a `frameskip`: the preprocessing fixes those).
    """
    spec_kwargs = gym.spec(env_id).kwargs
    unknown = sorted(set(env_kwargs or {}) - set(SETTINGS))
    if unknown:
        raise ValueError(f"Atari envs take only {', '.join(SETTINGS)} as env_kwargs (the DeepMind "
                         f"preprocessing fixes the rest); got {', '.join(unknown)}")
    settings = {k: spec_kwargs[k] for k in SETTINGS if k in spec_kwargs}
    return {"game": spec_kwargs["game"], **settings, **(env_kwargs or {})}


def describe_atari(env_id: str) -> str:
    """One line on what an Atari id trains on, e.g. "Atari: DeepMind preprocessing, sticky
    actions p=0.25"."""
    p = gym.spec(env_id).kwargs.get("repeat_action_probability", 0.0)
    return f"Atari: DeepMind preprocessing, sticky actions p={p:g}"


def make_atari_vec_env(env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None,
                       training: bool = True) -> gym.vector.VectorEnv:
    """`num_envs` preprocessed games of an Atari id, stepped by ale-py's C++ threads: 2 (one
    for a single game). A worker's 16 games reset in 0.74 s on 2 threads against 1.42 s on 1,
    which shortens a job's start-up while the learner's core is idle; stepping was no slower
    (one worker and the learner on 2 cores: docs/workloads.md, "Start-up: the games reset on
    two threads"). A worker, which reserves 1 CPU, may use 2 cores while its games step.

    Auto-resets in the same step (a game's last observation in `info["final_obs"]`, whose rows
    are meaningful only where the game ended). `training` gives the learner's view
    (`EpisodicLife`); otherwise full games with raw rewards.
    """
    from ale_py.vector_env import AtariVectorEnv

    settings = atari_settings(env_id, env_kwargs)
    env = AtariVectorEnv(settings.pop("game"), num_envs, num_threads=min(2, num_envs),
                         autoreset_mode="SameStep", reward_clipping=False, life_loss_info=training,
                         episodic_life=False, **PREPROCESSING, **settings)
    return EpisodicLife(env) if training else SeededAtari(env)


class SeededAtari(gym.vector.VectorWrapper):
    """AtariVectorEnv as the rest of gymnasium's vector envs: a list of per-env seeds, float
    rewards."""

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """Reset all envs; each of a list of seeds is taken modulo 2^31 (ale-py ignores a
        negative int32 seed, i.e. any seed from 2^31 on, and seeds from the OS instead)."""
        if isinstance(seed, (list, tuple, np.ndarray)):
            seed = np.asarray(seed, dtype=np.int64) % (1 << 31)
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        """Step every env with (N,) int actions; rewards as float32."""
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions, dtype=np.int64))
        return obs, reward.astype(np.float32), terminated, truncated, info


class EpisodicLife(SeededAtari):
    """The learner's view of Atari games: each life is an episode, rewards are their sign.

    Wraps an AtariVectorEnv made with `life_loss_info`, which reports a lost life as
    `terminated` while the game goes on (the next observation continues it; no reset, no
    fake transition), and a game over as `terminated` with a same-step reset. A lost life is
    told from a game over by the lives count: it dropped and is still above 0 (after a game
    over, the count is the new game's). `info[GAME_REWARD]` has the raw rewards and
    `info[GAME_OVER]` the envs whose game ended (game over or time limit), for the full-game
    returns that the worker reports.
    """

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """Reset all games; remembers their lives."""
        obs, info = super().reset(seed=seed, options=options)
        self.lives = np.asarray(info["lives"]).copy()
        return obs, info

    def step(self, actions):
        """Step every env: clipped rewards, a termination at each lost life."""
        obs, reward, terminated, truncated, info = super().step(actions)
        lives = np.asarray(info["lives"])
        life_lost = terminated & (lives > 0) & (lives < self.lives)
        self.lives = lives.copy()
        info = {**info, GAME_REWARD: reward, GAME_OVER: (terminated & ~life_lost) | truncated}
        return obs, np.sign(reward), terminated, truncated, info
