"""Videos while training: every `video_every`-th evaluation, one deterministic episode as an MP4.

A `VideoRecorder` actor (0 CPUs, at the lowest CPU priority, on the driver's node) plays the
episode with the weights of that evaluation and encodes it (`workers.video`); the driver's
`TrainingVideos` only starts a recording and later notes its result, so the training loop never
waits for one (only the end of a run waits, a bounded time, for the last one).

Files, in the run directory (a path or a storage URI), each written atomically, the MP4 first:

    videos/step-<10 digits>.mp4    H.264, the env's rgb_array render (Atari: the raw screen)
    videos/step-<10 digits>.json   {"step", "return", "length", "frames", "fps", "size", "complete"}

A video is listed (`list_videos`) once its sidecar exists, so a listed video is whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import storage
from service.records import checkpoint_id

if TYPE_CHECKING:
    from learner.config import PolicyConfig
    from learner.rollout import Weights
    from learner.spaces import SpacesSpec
    from service.run.sinks import TrainingSink
    from service.run.spec import JobSpec
# Ray, torch and the envs are imported where they are used: the API server reads the listing
# (`list_videos`) without them.

log = logging.getLogger(__name__)

VIDEO_MAX_STEPS = 10_000
"""A training video stops after this many env steps (11 minutes of Atari at 15 frames/s), so an
episode that never ends cannot grow one without bound; its sidecar then says complete: false."""
RECORDER_NICENESS = 19
"""The recorder's CPU priority (Linux nice value): the lowest, below the training actors'."""
FINISH_TIMEOUT_S = 120.0
"""At the end of a run, how long the driver waits for a recording still under way."""
VIDEOS_DIR = "videos"
_SIDECAR = re.compile(r"^(step-[0-9]{10,19})\.json$")


def video_location(run_location: str, video_id: str, suffix: str) -> str:
    """Where a run's video file is: `<run>/videos/<video id><suffix>` (".mp4" or ".json")."""
    return storage.join(run_location, VIDEOS_DIR, f"{video_id}{suffix}")


def list_videos(run_location: str) -> list[dict[str, Any]]:
    """A run's videos in step order: each sidecar's fields with `id`; sidecars that do not parse
    are left out (a listed video is one whose sidecar was written after its MP4)."""
    videos = []
    for location in storage.list_files(storage.join(run_location, VIDEOS_DIR)):
        match = _SIDECAR.match(location.rsplit("/", 1)[-1])
        if not match:
            continue
        try:
            meta = json.loads(storage.read_bytes(location))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("step"), int):
            videos.append({**meta, "id": match.group(1)})
    return sorted(videos, key=lambda v: v["step"])


def _lowest_priority() -> None:
    """Put every thread of this process (and so the ffmpeg it starts) at RECORDER_NICENESS;
    Linux sets priorities per thread. Elsewhere, the process's."""
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), RECORDER_NICENESS))
        except OSError:  # a thread that ended meanwhile
            pass


class VideoRecorder:
    """Plays and encodes one deterministic episode per `record` call, writing it to the run
    directory (a plain class: `TrainingVideos` makes it a Ray actor)."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], spaces: SpacesSpec,
                 policy_config: PolicyConfig, run_location: str) -> None:
        _lowest_priority()  # first: its imports are CPU the training needs more
        from learner.acting import acting_policy
        if spaces.is_image:  # the CNN runs in torch
            import torch
            torch.set_num_threads(1)
        self.env_id, self.env_kwargs, self.run_location = env_id, env_kwargs, run_location
        self.policy = acting_policy(spaces, policy_config, seed=0)
        self.env = self.fps = None

    def record(self, weights: Weights, step: int, seed: int) -> dict[str, Any]:
        """Record the episode from reset seed `seed` with `weights`; write `<step id>.mp4`, then
        its sidecar; returns the sidecar with `seconds`, the time it took."""
        from workers.video import record_episode, render_env

        t0 = time.monotonic()
        self.policy.load_weights(weights.tensors)
        if self.env is None:
            self.env, self.fps = render_env(self.env_id, self.env_kwargs)
        with tempfile.TemporaryDirectory(prefix="a2c-video-") as tmp:
            video = record_episode(self.policy, self.env, self.fps, seed, Path(tmp) / "episode.mp4", VIDEO_MAX_STEPS)
            data = Path(video.path).read_bytes()
        video_id = checkpoint_id(step)
        storage.write_bytes_atomic(video_location(self.run_location, video_id, ".mp4"), data)
        meta = {"step": step, "return": video.episode_return, "length": video.frames - 1, "frames": video.frames,
                "fps": self.fps, "size": len(data), "complete": video.ended}
        storage.write_bytes_atomic(video_location(self.run_location, video_id, ".json"), json.dumps(meta).encode())
        return {**meta, "seconds": round(time.monotonic() - t0, 3)}


class TrainingVideos:
    """The driver's side of a run's videos: which evaluations are recorded, starting a recording
    without waiting for it, reporting finished ones as `video` events.

    One recording runs at a time. One that falls due meanwhile waits its turn, and a newer one
    takes its place (the next `video` event counts those skipped), so the newest due video is
    always the next recorded, and `finish` records the last of a run. A recording that fails is
    reported (`video_failed`) and ends the run's videos; the job goes on.
    """

    def __init__(self, spec: JobSpec, spaces: SpacesSpec, run_location: str, sink: TrainingSink) -> None:
        self.spec, self.spaces, self.run_location, self.sink = spec, spaces, run_location, sink
        self.every = spec.eval_every * spec.video_every
        """Updates between recordings (0: none)."""
        self.actor: Any = None
        self.pending: tuple[int, Any] | None = None
        """(step, the result's reference) of the recording under way."""
        self.waiting: tuple[Any, int, int] | None = None
        """(weights, step, seed) of the recording due next."""
        self.skipped = 0
        """Due recordings that gave way to a newer one since the last `video` event."""

    def after_update(self, weights, step: int, updates: int, eval_seed: int | None) -> None:
        """Note a finished recording; ask for one when this update was evaluated (from reset
        seed `eval_seed`, not None then) and a video is due. Never waits."""
        if self.every and eval_seed is not None and updates % self.every == 0:
            self.skipped += self.waiting is not None
            self.waiting = (weights, step, eval_seed)
        self._collect(0.0)
        self._start()

    def finish(self, stop: threading.Event) -> None:
        """Record what is due and wait for it (FINISH_TIMEOUT_S at most in all, and only until
        `stop` is set), then end the recorder."""
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while (self.pending is not None or self.waiting is not None) and not stop.is_set():
            self._start()
            left = deadline - time.monotonic()
            if left <= 0:
                step = self.pending[0] if self.pending else self.waiting[1]
                self.sink.event("video_failed", f"step {step}: not recorded within {FINISH_TIMEOUT_S:g}s "
                                "of the end of the run")
                break
            self._collect(min(left, 0.5))
        self.close()

    def close(self) -> None:
        """End the recorder at once (a recording under way is lost)."""
        if self.actor is not None:
            import ray
            try:
                ray.kill(self.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actor = self.pending = self.waiting = None

    def _start(self) -> None:
        """Start the waiting recording if none is under way (the recorder actor on first use)."""
        if self.waiting is None or self.pending is not None or not self.every:
            return
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        if self.actor is None:
            # On the driver's node: a run directory on a local path is the driver's disk.
            strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self.actor = ray.remote(VideoRecorder).options(
                num_cpus=0, scheduling_strategy=strategy, enable_task_events=False).remote(
                self.spec.env, self.spec.env_kwargs, self.spaces, self.spec.policy, self.run_location)
        weights, step, seed = self.waiting
        self.waiting = None
        self.pending = (step, self.actor.record.remote(weights, step, seed))

    def _collect(self, timeout: float) -> None:
        """Report the recording under way if it finished within `timeout` seconds."""
        if self.pending is None:
            return
        import ray

        from service.run.worker_group import first_line
        step, ref = self.pending
        ready, _ = ray.wait([ref], timeout=timeout)
        if not ready:
            return
        self.pending = None
        try:
            meta = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a video never fails the job
            self.sink.event("video_failed", f"step {step}: {first_line(exc)}; no more videos in this run")
            self.every = 0
            self.close()
            return
        ended = "" if meta["complete"] else f", cut at {meta['length']} steps"
        skipped = (f"; {self.skipped} due meanwhile gave way to newer ones (one is recorded at a time)"
                   if self.skipped else "")
        self.skipped = 0
        self.sink.event("video", f"step {step}: return {meta['return']:g}, {meta['frames']} frames{ended}, "
                        f"recorded in {meta['seconds']:.1f}s{skipped}")
