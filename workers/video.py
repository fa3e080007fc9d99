"""Videos of a policy's episodes (deterministic; sampled for `a2c evaluate --stochastic`): one
MP4 per episode, written atomically.

The frames are what a person would watch, not what the policy sees: the env's `rgb_array`
render, and for Atari the raw 210x160 colour screen (the policy still gets the preprocessed
84x84 frame stack). MP4s are encoded by imageio with imageio-ffmpeg's ffmpeg (its wheel carries
the binary).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import gymnasium as gym
import numpy as np

from learner.acting import NumpyPolicy, TorchActing

ATARI_FPS = 15
"""An Atari agent step is 4 emulator frames of the console's 60 per second."""


@dataclass(frozen=True)
class Video:
    """One recorded episode."""

    path: str
    episode_return: float
    frames: int
    """Frames in the MP4: the reset frame and one per env step."""
    ended: bool = True
    """Whether the episode ended by itself (False: it was cut at `max_steps`)."""


class FireReset(gym.Wrapper):
    """Press FIRE after each reset in games that need it to start (as the training envs do)."""

    def reset(self, **kwargs):
        """Reset, then FIRE once (a reset again if that ended the game)."""
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


def render_env(env_id: str, env_kwargs: dict[str, Any]) -> tuple[gym.Env, float]:
    """(one env of `env_id` that renders `rgb_array` frames, the video's frames per second).

    Atari ids get the DeepMind preprocessing of `workers.atari` as gymnasium wrappers (no-op
    starts, 4-frame skip with max-pooling, 84x84 grayscale, a stack of 4, FIRE at reset) over
    an emulator that renders the raw screen; full games, sticky actions as the id sets them.
    """
    from workers.atari import PREPROCESSING, atari_settings, is_atari
    from workers.env import check_env_id, prepare_mujoco

    check_env_id(env_id)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off-screen: no display to probe
    # and plays no sound: without this, pygame.init() probes ALSA, which on a machine with no
    # sound card prints eight lines of errors to the console (a recorder's, through Ray's log).
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    if not is_atari(env_id):
        prepare_mujoco(env_id)
        env = gym.make(env_id, render_mode="rgb_array", **env_kwargs)
        return env, float(env.metadata.get("render_fps") or 30)
    settings = atari_settings(env_id, env_kwargs)
    settings.pop("game")
    env = gym.make(env_id, render_mode="rgb_array", frameskip=1, **settings)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=PREPROCESSING["noop_max"], frame_skip=PREPROCESSING["frameskip"],
                                          screen_size=PREPROCESSING["img_height"], grayscale_obs=True,
                                          terminal_on_life_loss=False, scale_obs=False)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    env = gym.wrappers.FrameStackObservation(env, PREPROCESSING["stack_num"])
    return env, float(ATARI_FPS)


def can_render(env_id: str) -> bool:
    """Whether the registered env says it renders `rgb_array` frames (True when it does not say)."""
    from gymnasium.envs.registration import load_env_creator

    entry = gym.spec(env_id).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    modes = (getattr(creator, "metadata", None) or {}).get("render_modes")
    return modes is None or "rgb_array" in modes


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Encode (H, W, 3) uint8 frames as an H.264 MP4 at `path`, its index at the front (so a
    browser can play it before it has all of it); returns the number of frames. Frames are
    encoded as they come (an iterator is never held whole), into a temporary file in the same
    directory that is then renamed, so a reader never sees part of one."""
    import imageio

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # ffmpeg picks the container by suffix
    count = 0
    try:
        with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                macro_block_size=2, ffmpeg_log_level="error",
                                output_params=["-movflags", "+faststart"]) as writer:
            for frame in frames:
                writer.append_data(frame)
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def record_episode(policy: NumpyPolicy | TorchActing, env: gym.Env, fps: float, seed: int, path: Path,
                   max_steps: int = 100_000, deterministic: bool = True) -> Video:
    """Play one episode of `env` (made by `render_env`) from reset seed `seed`, deterministic or
    with sampled actions, encoding its frames into an MP4 at `path` as they come; `max_steps`
    bounds the episode."""
    tally = {"return": 0.0, "ended": False}

    def frames() -> Iterator[np.ndarray]:
        obs, _ = env.reset(seed=seed)
        yield env.render()
        exploration = None if deterministic else policy.sample_exploration(1)
        for _ in range(max_steps):
            action, _, _ = policy.act(np.asarray(obs)[None], deterministic=deterministic, exploration=exploration)
            obs, reward, terminated, truncated, _ = env.step(policy.clip_action(action)[0])
            tally["return"] += float(reward)
            yield env.render()
            if terminated or truncated:
                tally["ended"] = True
                return

    count = write_mp4(path, frames(), fps)
    return Video(str(path), tally["return"], count, tally["ended"])


def record_episodes(policy: NumpyPolicy | TorchActing, env_id: str, env_kwargs: dict[str, Any], episodes: int,
                    seed: int, out_dir: Path, max_steps: int = 100_000, deterministic: bool = True) -> list[Video]:
    """Play `episodes` episodes (env seeds seed, seed+1, ...), deterministic or with sampled
    actions, and write each as `<out_dir>/episode-<i>.mp4`; `max_steps` bounds envs without a
    time limit."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env, fps = render_env(env_id, env_kwargs)
    try:
        return [record_episode(policy, env, fps, seed + i, out_dir / f"episode-{i}.mp4", max_steps, deterministic)
                for i in range(episodes)]
    finally:
        env.close()
