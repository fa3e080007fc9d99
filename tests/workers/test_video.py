"""Videos of deterministic episodes: one MP4 per episode, the env's render (Atari: the raw screen)."""

from __future__ import annotations

import imageio.v3 as iio
import pytest

from learner.acting import TorchActing, acting_policy
from learner.config import PolicyConfig
from learner.policy import ActorCritic, numpy_state
from learner.spaces import SpacesSpec
from workers.video import record_episodes


def test_cartpole_episodes_become_mp4s_of_the_rgb_render_one_frame_per_step(tmp_path):
    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    policy = acting_policy(spaces, PolicyConfig(), seed=0)
    policy.load_weights(numpy_state(ActorCritic(spaces, PolicyConfig())))
    videos = record_episodes(policy, "CartPole-v1", {}, 2, 0, tmp_path / "videos")
    assert [v.path for v in videos] == [str(tmp_path / "videos" / f"episode-{i}.mp4") for i in range(2)]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["episode-0.mp4", "episode-1.mp4"]
    for video in videos:
        frames = iio.imread(video.path)
        # CartPole pays 1 per step: the reset frame and one per step.
        assert frames.shape == (video.frames, 400, 600, 3) and video.frames == video.episode_return + 1
        assert frames.std() > 0


def test_atari_videos_show_the_raw_colour_screen_not_the_84x84_input(tmp_path):
    pytest.importorskip("ale_py")
    policy = TorchActing(ActorCritic(SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete",
                                                action_n=6), PolicyConfig(torso="nature_cnn")))
    (video,) = record_episodes(policy, "ALE/Pong-v5", {}, 1, 0, tmp_path, max_steps=40)
    frames = iio.imread(video.path)
    assert frames.shape == (41, 210, 160, 3)
    assert (frames[..., 0] != frames[..., 1]).any()  # colour, not grayscale
