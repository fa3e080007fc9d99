"""Frames per second on Atari: ours against SB3 A2C (CnnPolicy, rl-zoo's settings), side by side.

Each run trains PongNoFrameskip-v4 from scratch for --steps agent steps (4 frames each) in its
own process tree, launched one after another and interleaved over --rounds, so that other load
on the machine falls on every configuration alike. Two rates are given per run: in the training
loop (first env step to the last update), and from process launch (start-up included: imports,
Ray and its actors, envs). A third figure depends little on other load: frames per CPU-second
of the whole process tree (Ray's daemons included) in the loop. Ours runs the tuned Atari job
through its CLI (1 torch thread per worker; the learner with `--learner-cpus` threads), as it
is and with other layouts and precisions (`OURS`); SB3 runs `bench.sb3_atari` with 1 and 2
torch threads. The CPU's bfloat16 units (which `cnn_precision` auto looks for) are recorded.

    python -m bench.atari_fps --steps 40000 --rounds 2 --out bench/results/atari-fps-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ours import REPO, run_ours
from bench.procmon import Launched
from bench.record import RunRecord

ENV = "PongNoFrameskip-v4"
FRAMES_PER_STEP = 4

OURS = {
    "ours tuned (async, 1 worker x 16 envs, cnn_precision auto)": [],
    "ours async, 1 worker x 16 envs, float32": ["--cnn-precision", "float32"],
    "ours async, 1 worker x 16 envs, bfloat16": ["--cnn-precision", "bfloat16"],
    "ours async, 2 workers x 8 envs, float32": ["--workers", "2", "--envs-per-worker", "8", "--cnn-precision", "float32"],
    "ours sync, 2 workers x 8 envs, float32": ["--mode", "sync", "--workers", "2", "--envs-per-worker", "8",
                                               "--cnn-precision", "float32"],
    "ours sync, 2 workers x 8 envs, learner 2 threads, float32": ["--mode", "sync", "--workers", "2",
                                                                  "--envs-per-worker", "8", "--learner-cpus", "2",
                                                                  "--cnn-precision", "float32"],
}
"""Our configurations: extra CLI flags over the tuned Atari job (async, 1 worker x 16 envs,
the learner on 1 thread, `cnn_precision` auto)."""
SB3 = {"sb3 1 thread": 1, "sb3 2 threads": 2}
"""SB3's configurations: torch threads."""


def run_sb3(threads: int, steps: int, seed: int, log_dir: Path, max_wall_s: float) -> RunRecord:
    """bench.sb3_atari in its own process; its record, with peak memory and load."""
    with tempfile.TemporaryDirectory(prefix="a2c-bench-") as tmp:
        out = Path(tmp) / "record.json"
        cmd = [sys.executable, "-m", "bench.sb3_atari", "--env", ENV, "--steps", str(steps), "--seed", str(seed),
               "--threads", str(threads), "--max-wall-s", str(max_wall_s), "--out", str(out),
               "--launched-at", repr(time.time())]
        proc = Launched(cmd, log_dir / f"sb3-t{threads}-s{seed}.log", cwd=REPO, track_processes=True)
        code = proc.wait(max_wall_s + 300)
        try:
            record = RunRecord.from_json(out.read_text())
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            record = RunRecord("sb3-a2c", ENV, seed, error=f"exit {code}, no record ({exc!r}): {proc.tail()}")
        record.peak_rss_mb, record.load_before, record.load_after = (proc.monitor.peak_rss_mb, proc.load_before,
                                                                     proc.load_after)
        if not record.error:
            loop_start = proc.launched_at + record.startup_s
            record.extra["loop_cpu_s"] = proc.monitor.tree_cpu_s(loop_start, loop_start + record.loop_wall_s)
        return record


def rates(record: RunRecord) -> dict:
    """Frames/s in the loop and from launch, and the run's context."""
    if record.error or not record.loop_wall_s:
        return {"error": record.error}
    frames = record.steps * FRAMES_PER_STEP
    cpu = record.extra.get("loop_cpu_s")
    return {"frames": frames, "loop_s": round(record.loop_wall_s, 1), "startup_s": round(record.startup_s, 1),
            "loop_cpu_s": cpu, "frames_per_cpu_s": round(frames / cpu) if cpu else None,
            "loop_fps": round(frames / record.loop_wall_s), "launch_fps": round(frames / (record.startup_s
                                                                                         + record.loop_wall_s)),
            "peak_rss_mb": round(record.peak_rss_mb or 0), "load_before": record.load_before,
            "load_after": record.load_after}


def main(argv: list[str] | None = None) -> None:
    """Run every configuration --rounds times, interleaved; print and write the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40_000, help="agent steps per run (4 frames each)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", nargs="*", help="configuration names to run (default: all)")
    p.add_argument("--max-wall-s", type=float, default=900.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    configs = [*OURS, *SB3]
    unknown = sorted(set(args.only or []) - set(configs))
    if unknown:
        p.error(f"--only: no configuration {', '.join(map(repr, unknown))}; known: {', '.join(map(repr, configs))}")
    configs = [c for c in configs if not args.only or c in args.only]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="a2c-bench-fps-") as log_dir:
        for r in range(args.rounds):
            for name in configs:
                if name in OURS:  # a log directory each: run_ours names its logs by env, seed and layout flags
                    logs = Path(log_dir) / re.sub(r"\W+", "-", name)
                    logs.mkdir(exist_ok=True)
                    record = run_ours(ENV, args.steps, seed=r, workers=None, extra=[*OURS[name], "--eval-episodes", "1"],
                                      timeout_s=args.max_wall_s + 300, log_dir=logs, track_processes=True)
                else:
                    record = run_sb3(SB3[name], args.steps, r, Path(log_dir), args.max_wall_s)
                runs[name].append(rates(record))
                print(f"round {r} {name}: {runs[name][-1]}", flush=True)
    table = {}
    for name, rs in runs.items():
        ok = [x for x in rs if "loop_fps" in x]
        per_cpu = [x["frames_per_cpu_s"] for x in ok if x.get("frames_per_cpu_s")]
        table[name] = {"median_loop_fps": statistics.median(x["loop_fps"] for x in ok) if ok else None,
                       "median_launch_fps": statistics.median(x["launch_fps"] for x in ok) if ok else None,
                       "median_frames_per_cpu_s": statistics.median(per_cpu) if per_cpu else None,
                       "runs": rs}
    base = table.get("sb3 2 threads", {}).get("median_loop_fps")
    print(f"\n{'configuration':58s} {'loop frames/s':>14s} {'from launch':>12s} {'x sb3 2 thr':>12s} "
          f"{'frames/CPU-s':>13s}")
    for name, row in table.items():
        ratio = f"{row['median_loop_fps'] / base:.2f}" if base and row["median_loop_fps"] else "-"
        print(f"{name:58s} {row['median_loop_fps'] or '-':>14} {row['median_launch_fps'] or '-':>12} {ratio:>12s} "
              f"{row['median_frames_per_cpu_s'] or '-':>13}")
    if args.out:
        import torch
        from learner.policy import bfloat16_units
        args.out.parent.mkdir(parents=True, exist_ok=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO).stdout.strip()
        args.out.write_text(json.dumps({
            "bench": "atari_fps", "env": ENV, "steps_per_run": args.steps, "rounds": args.rounds,
            "commit": commit, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
            "platform": platform.platform(), "command": "python -m bench.atari_fps " + " ".join(argv or sys.argv[1:]),
            "bfloat16_units": bfloat16_units(torch.device("cpu")) or None,
            "threads": {"ours": "workers 1 torch thread + 2 ALE threads each; learner --learner-cpus threads",
                        "sb3": "torch threads as named; envs in the same process (DummyVecEnv)"},
            "results": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
