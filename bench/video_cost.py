"""What recording a training video costs per frame: CartPole and Pong, as `VideoRecorder` does it.

For each env, a fresh policy of the job's (tuned) config plays deterministic episodes on the
render env of `workers.video`, and each episode is encoded to an MP4 as it is played
(`record_episode`). Per frame: wall time, and CPU time of this process and of ffmpeg together
(1 torch thread, as the recorder runs). Also MP4 bytes per frame. Run at the default priority,
so the figures are the work itself; the recorder runs it at nice 19.

    python -m bench.video_cost --episodes 3 --max-steps 2000 --checkpoint CartPole-v1=runs/<trained run> \
        --out bench/results/video-cost-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENVS = ("CartPole-v1", "PongNoFrameskip-v4")


def _cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (ffmpeg)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(env_id: str, episodes: int, max_steps: int, checkpoint: str | None = None) -> dict:
    """Record `episodes` episodes of `env_id` with a fresh policy, or a checkpoint's (a trained
    CartPole policy plays 500 steps, a fresh one about 10); per-frame costs and sizes."""
    import torch

    from learner.acting import acting_policy
    from learner.policy import ActorCritic, numpy_state
    from service.run.spec import build_spec, job_spaces
    from workers.video import record_episode, render_env

    torch.set_num_threads(1)
    spec = build_spec({"env": env_id})
    if checkpoint:
        from service.run.checkpoints import find_archive, read_checkpoint
        policy = read_checkpoint(find_archive(checkpoint)).acting()
    else:
        policy = acting_policy(job_spaces(spec), spec.policy, seed=0)  # as the recorder actor plays
        policy.load_weights(numpy_state(ActorCritic(job_spaces(spec), spec.policy)))
    env, fps = render_env(env_id, spec.env_kwargs)
    rows = []
    try:
        record_episode(policy, env, fps, 0, Path(tempfile.mkdtemp()) / "warmup.mp4", 20)  # imports, first encode
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(episodes):
                path = Path(tmp) / f"episode-{i}.mp4"
                t0, c0 = time.perf_counter(), _cpu_s()
                video = record_episode(policy, env, fps, 1000 + i, path, max_steps)
                wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
                rows.append({"frames": video.frames, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                             "bytes": path.stat().st_size, "complete": video.ended})
        shape = list(env.render().shape)
    finally:
        env.close()
    frames = sum(r["frames"] for r in rows)
    return {"env": env_id, "policy": checkpoint or "fresh", "fps": fps, "frame_shape": shape,
            "episodes": rows, "frames": frames,
            "wall_ms_per_frame": round(1000 * sum(r["wall_s"] for r in rows) / frames, 3),
            "cpu_ms_per_frame": round(1000 * sum(r["cpu_s"] for r in rows) / frames, 3),
            "bytes_per_frame": round(sum(r["bytes"] for r in rows) / frames, 1)}


def main() -> None:
    """Measure every env of ENVS; print and optionally write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=2000, help="cap on each episode's env steps")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ENV=ARCHIVE_OR_DIR",
                        help="play this env with a checkpoint's policy (repeatable)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"bench": "video_cost", "commit": commit, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
              "loadavg_before": os.getloadavg()}, "command": " ".join(["python -m bench.video_cost", *sys.argv[1:]]),
              "envs": [measure(e, args.episodes, args.max_steps, checkpoints.get(e)) for e in ENVS]}
    result["machine"]["loadavg_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
