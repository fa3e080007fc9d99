"""Videos while training: every `video_every`-th evaluation becomes `<run>/videos/step-N.mp4` and
its JSON sidecar, recorded off the loop; `video_every=0` records none; the field is validated."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest

from service.run.spec import InvalidSpec, build_spec, env_spaces
from service.run.videos import list_videos

SMALL = {"env": "CartPole-v1", "workers": 2, "envs_per_worker": 4, "a2c": {"steps_per_batch": 256},
         "total_steps": 2048, "eval_every": 2, "eval_episodes": 2, "checkpoint_every": 100}
"""8 updates, evaluated after updates 2, 4, 6 and 8."""


class Events:
    """A sink that keeps events (and ignores the rest)."""

    def __init__(self):
        self.events = []

    def event(self, kind, message):
        self.events.append((kind, message))

    def metrics(self, row):
        pass

    def checkpoint(self, info):
        pass

    def rewind(self, step):
        pass


@pytest.mark.ray
def test_short_cartpole_run_writes_a_playable_mp4_and_sidecar_every_video_every_evaluations(ray_session, tmp_path):
    from service.run.loop import Trainer
    sink = Events()
    summary = Trainer(build_spec({**SMALL, "video_every": 2}), tmp_path, sink).run()
    assert summary["status"] == "SUCCEEDED"
    # Evaluations after updates 2, 4, 6, 8: the 2nd and 4th are recorded (steps 1024 and 2048).
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "step-0000001024.json", "step-0000001024.mp4", "step-0000002048.json", "step-0000002048.mp4"]
    videos = list_videos(str(tmp_path))
    assert [v["id"] for v in videos] == ["step-0000001024", "step-0000002048"]
    for video in videos:
        mp4 = tmp_path / "videos" / f"{video['id']}.mp4"
        assert set(video) == {"id", "step", "return", "length", "frames", "fps", "size", "complete"}
        assert video["size"] == mp4.stat().st_size and video["fps"] == 50 and video["complete"] is True
        frames = iio.imread(mp4)
        # The env's 600x400 render, the reset frame and one per step; CartPole pays 1 per step.
        assert frames.shape == (video["frames"], 400, 600, 3) and frames.std() > 0
        assert video["frames"] == video["length"] + 1 == video["return"] + 1
        assert json.loads((tmp_path / "videos" / f"{video['id']}.json").read_text())["step"] == video["step"]
    assert [k for k, _ in sink.events].count("video") == 2
    assert not any(name.startswith(".") for name in (p.name for p in (tmp_path / "videos").iterdir()))


@pytest.mark.ray
def test_video_every_zero_records_no_video(ray_session, tmp_path):
    from service.run.loop import Trainer
    sink = Events()
    Trainer(build_spec({**SMALL, "total_steps": 1024, "video_every": 0}), tmp_path, sink).run()
    assert not (tmp_path / "videos").exists() and list_videos(str(tmp_path)) == []
    assert not any(kind.startswith("video") for kind, _ in sink.events)


def test_video_every_defaults_to_5_and_refuses_negatives_and_non_integers():
    assert build_spec({"env": "CartPole-v1"}).video_every == 5
    for bad in (-1, 1.5, "often"):
        with pytest.raises(InvalidSpec) as exc:
            build_spec({"env": "CartPole-v1", "video_every": bad}, strict=True)
        assert exc.value.field == "video_every"


def test_an_env_that_cannot_render_frames_is_refused_unless_video_every_is_0(monkeypatch):
    import workers.video
    monkeypatch.setattr(workers.video, "can_render", lambda env_id: False)
    with pytest.raises(InvalidSpec) as exc:
        env_spaces(build_spec({"env": "CartPole-v1"}))
    assert exc.value.field == "video_every" and "set video_every to 0" in exc.value.message
    env_spaces(build_spec({"env": "CartPole-v1", "video_every": 0}))
    env_spaces(build_spec({"env": "CartPole-v1", "eval_every": 0}))  # no evaluations, so no videos


def test_registered_envs_say_whether_they_render_rgb_array():
    from workers.video import can_render
    assert can_render("CartPole-v1") and can_render("Pendulum-v1")
