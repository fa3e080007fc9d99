"""Atari env throughput with random actions: the candidate vector envs for workers/atari.py.

Each candidate gives the same DeepMind observation (noop reset up to 30, frame skip 4 with a
max over the last 2 frames, 84x84 grayscale, a stack of 4; uint8) for PongNoFrameskip-v4's
settings (no sticky actions), auto-resetting in the same step:

- `ale-vector`: ale-py's C++ `AtariVectorEnv` (threads step and preprocess the envs), in
  SAME_STEP mode with life-loss termination info, as workers/atari.py builds it;
- `gym-sync`: gymnasium's `AtariPreprocessing` + `FrameStackObservation` on each env, in a
  `SyncVectorEnv` (SAME_STEP);
- `envpool`: envpool's `Pong-v5` with the same settings, when envpool is installed.

Frames are emulator frames (4 per agent step). Rounds interleave the candidates, so that other
load on the machine falls on all of them alike; frames per CPU-second (all of the process's
threads) is given too, as it depends little on that load.

    python -m bench.atari_envs --envs 8 16 --steps 1500 --rounds 3 --out bench/results/atari-envs.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np


def ale_vector(num_envs: int, threads: int, seed: int):
    """ale-py's AtariVectorEnv as workers/atari.py uses it (raw rewards, life-loss info)."""
    from ale_py.vector_env import AtariVectorEnv
    return AtariVectorEnv("pong", num_envs, num_threads=threads, autoreset_mode="SameStep",
                          reward_clipping=False, life_loss_info=True, repeat_action_probability=0.0)


def gym_sync(num_envs: int, threads: int, seed: int):
    """gymnasium's wrappers on single envs, in a SyncVectorEnv (threads unused)."""
    import ale_py
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
    gym.register_envs(ale_py)

    def make():
        env = gym.make("PongNoFrameskip-v4")
        return FrameStackObservation(AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84), 4)
    return gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)


def envpool_env(num_envs: int, threads: int, seed: int):
    """envpool's Pong-v5 with DeepMind settings and no sticky actions (gymnasium API)."""
    import envpool
    return envpool.make_gymnasium("Pong-v5", num_envs=num_envs, num_threads=threads,
                                  repeat_action_probability=0.0, episodic_life=False,
                                  reward_clip=False, noop_max=30, frame_skip=4, stack_num=4,
                                  img_height=84, img_width=84, max_episode_steps=27_000, seed=seed)


CANDIDATES: dict[str, Callable] = {"ale-vector": ale_vector, "gym-sync": gym_sync, "envpool": envpool_env}


def measure(make: Callable, num_envs: int, threads: int, steps: int, seed: int) -> dict:
    """Agent steps and emulator frames per second over `steps` vector steps after a warm-up."""
    env = make(num_envs, threads, seed)
    try:
        rng = np.random.default_rng(seed)
        # envpool takes its seed at creation and warns about one given to reset
        obs, _ = env.reset() if make is envpool_env else env.reset(seed=seed)
        n_actions = int(env.single_action_space.n)
        actions = rng.integers(0, n_actions, (steps + 50, num_envs))
        for t in range(50):
            env.step(actions[t])
        t0, c0 = time.perf_counter(), time.process_time()
        for t in range(50, steps + 50):
            obs, *_ = env.step(actions[t])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        env.close()
    agent_steps = steps * num_envs
    return {"obs": f"{obs.dtype}{list(obs.shape)}", "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "steps_per_s": round(agent_steps / wall), "frames_per_s": round(4 * agent_steps / wall),
            "frames_per_cpu_s": round(4 * agent_steps / cpu)}


def main(argv: list[str] | None = None) -> None:
    """Measure every available candidate at each env count, interleaved over rounds."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", type=int, nargs="+", default=[8, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="threads of the threaded candidates (ale-vector, envpool)")
    p.add_argument("--steps", type=int, default=1500, help="vector steps timed per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    available = {}
    for name, make in CANDIDATES.items():
        try:
            make(1, 1, 0).close()
            available[name] = make
        except Exception as exc:  # noqa: BLE001 - a candidate that is not installed is reported
            print(f"{name}: unavailable ({type(exc).__name__}: {exc})")
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for n in args.envs:
            for name, make in available.items():
                for threads in (args.threads if name != "gym-sync" else [1]):
                    key = f"{name} envs={n} threads={threads}"
                    res = measure(make, n, threads, args.steps, seed=r)
                    runs.setdefault(key, []).append(res)
                    print(f"round {r} {key}: {res['frames_per_s']} frames/s", flush=True)
    table = {k: {"median_frames_per_s": statistics.median(x["frames_per_s"] for x in v),
                 "median_frames_per_cpu_s": statistics.median(x["frames_per_cpu_s"] for x in v),
                 "frames_per_s": [x["frames_per_s"] for x in v], "obs": v[0]["obs"]} for k, v in runs.items()}
    print("\ncandidate                         median frames/s  frames/CPU-s  (rounds' frames/s)")
    for k, v in table.items():
        print(f"{k:33s} {v['median_frames_per_s']:>10,.0f}  {v['median_frames_per_cpu_s']:>12,.0f}  {v['frames_per_s']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "bench": "atari_envs", "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
            "platform": platform.platform(), "load_after": os.getloadavg(), "steps": args.steps,
            "rounds": args.rounds, "results": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
