"""MuJoCo at rl-zoo's budget: HalfCheetah-v5 and Hopper-v5 trained through the CLI, seed by seed.

    python -m bench.mujoco --env HalfCheetah-v5 Hopper-v5 --seeds 0 1 2 --steps 1000000

Each run is `python -m api.cli train` with the env's tuned values (flags after `--` are
passed on), deterministic evaluations about every `--eval-steps` env steps and at the end. The
JSON (bench/results/mujoco-<git>.json unless `--out`) has, per run: the final mean return of
the last 20 training episodes, the final deterministic evaluation (`--eval-episodes` fresh
episodes), the evaluation curve, wall time and env steps/s; per env, the mean and range over
seeds next to rl-zoo's published A2C score. Runs go one at a time unless `--parallel N`: on a
shared machine, say so when quoting wall times (each run records the load average around it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ZOO_A2C = {"HalfCheetah-v5": (3041.2, "HalfCheetah-v3"), "Hopper-v5": (733.5, "Hopper-v3"),
           "Walker2d-v5": (None, "Walker2d-v3"), "Ant-v5": (None, "Ant-v3")}
"""rl-zoo's benchmark.md A2C score at 1M steps (deterministic evaluation of one trained agent),
and the id it was measured on; None where it publishes none."""


def _git() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def _steps_per_batch(env: str, workers: int, extra: list[str]) -> int:
    """The batch size the run will use (tuned or given), to space the evaluations."""
    from api.cli import build_parser
    from service.train import spec_from_args
    args = build_parser().parse_args(["train", "--env", env, "--workers", str(workers), *extra])
    return spec_from_args(args).a2c.steps_per_batch


def run_one(env: str, seed: int, steps: int, workers: int, eval_steps: int, eval_episodes: int,
            extra: list[str], out: Path) -> dict[str, Any]:
    """One training run through the CLI; its summary, final evaluation and curve."""
    every = max(1, eval_steps // _steps_per_batch(env, workers, extra))
    cmd = [sys.executable, "-m", "api.cli", "train", "--env", env, "--total-steps", str(steps),
           "--workers", str(workers), "--seed", str(seed), "--eval-every", str(every),
           "--eval-episodes", str(eval_episodes), "--checkpoint-every", "1000000", "--out", str(out), *extra]
    load = os.getloadavg()
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    record: dict[str, Any] = {"env": env, "seed": seed, "command": " ".join(cmd[1:]),
                              "load_before": [round(x, 2) for x in load],
                              "load_after": [round(x, 2) for x in os.getloadavg()]}
    if done.returncode != 0:
        return {**record, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    evals = [(r["step"], round(r["eval_return_mean"], 1)) for r in rows if "eval_return_mean" in r]
    config = json.loads((out / "config.json").read_text())
    return {**record, "steps": summary["steps"], "status": summary["status"],
            "final_return_mean": round(summary["final_return_mean"], 1),
            "final_eval": evals[-1][1] if evals else None,
            "best_eval": max(e for _, e in evals) if evals else None,
            "wall_s": round(elapsed, 1), "loop_wall_s": round(rows[-1]["wall_s"], 1),
            "startup_s": summary["startup_s"], "env_steps_per_s": summary["env_steps_per_s"],
            "eval_curve": evals,
            "config": {k: config[k] for k in ("workers", "envs_per_worker", "a2c", "policy", "tuned")}}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per env: mean, min and max over seeds of the final training return and evaluation."""
    out: dict[str, Any] = {}
    for env in dict.fromkeys(r["env"] for r in runs):
        ok = [r for r in runs if r["env"] == env and "error" not in r]
        zoo, zoo_id = ZOO_A2C.get(env, (None, None))
        entry: dict[str, Any] = {"runs": len(ok), "zoo_a2c": zoo, "zoo_id": zoo_id}
        for key in ("final_return_mean", "final_eval", "wall_s", "env_steps_per_s"):
            values = [r[key] for r in ok if r.get(key) is not None]
            if values:
                entry[key] = {"mean": round(statistics.fmean(values), 1), "min": min(values), "max": max(values)}
        out[env] = entry
    return out


def table(runs: list[dict[str, Any]]) -> str:
    """The per-seed table of the report."""
    lines = [f"{'env':<16}{'seed':>5}{'final return':>14}{'final eval':>12}{'best eval':>11}"
             f"{'wall s':>9}{'steps/s':>9}"]
    for r in runs:
        if "error" in r:
            lines.append(f"{r['env']:<16}{r['seed']:>5}  error: {r['error']}")
            continue
        lines.append(f"{r['env']:<16}{r['seed']:>5}{r['final_return_mean']:>14.1f}{r['final_eval']:>12.1f}"
                     f"{r['best_eval']:>11.1f}{r['wall_s']:>9.0f}{r['env_steps_per_s']:>9.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the plan, print the table, write the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m bench.mujoco", description=__doc__.splitlines()[0])
    p.add_argument("--env", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--eval-steps", type=int, default=50_000, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--parallel", type=int, default=1, help="runs at once (each its own embedded Ray)")
    p.add_argument("--out", type=Path, help="JSON result path (default bench/results/mujoco-<git>.json)")
    args = p.parse_args(argv)
    git = _git()
    result: dict[str, Any] = {
        "bench": "mujoco", "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": git,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "plan": {"envs": args.env, "seeds": args.seeds, "steps": args.steps, "workers": args.workers,
                 "eval_steps": args.eval_steps, "eval_episodes": args.eval_episodes, "parallel": args.parallel,
                 "extra_flags": extra},
        "runs": [],
    }
    path = args.out or RESULTS / f"mujoco-{git.replace('+', '-')}.json"
    plan = [(env, seed) for env in args.env for seed in args.seeds]
    with tempfile.TemporaryDirectory(prefix="a2c-mujoco-") as tmp, ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_one, env, seed, args.steps, args.workers, args.eval_steps,
                               args.eval_episodes, extra, Path(tmp) / f"{env}-{seed}") for env, seed in plan]
        for future in futures:  # in plan order; saved after each, so a long plan keeps its progress
            run = future.result()
            result["runs"].append(run)
            print(table([run]).splitlines()[-1], flush=True)
            result["summary"] = summarize(result["runs"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["runs"]))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
