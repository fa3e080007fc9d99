"""CartPole-v1's tuned entry, held to the end: the final policy of every seed and budget.

    nice -n 5 python -m bench.cartpole_stability --seeds 0 1 2 3 4 --steps 100000 150000 200000

Each run is `python -m api.cli train --env CartPole-v1` with the tuned values (flags after
`--` are passed on, to screen alternatives), an evaluation every `--eval-steps` env steps, and
then its *final* checkpoint evaluated by `python -m api.cli evaluate` over 20 deterministic
episodes (fresh seeds). The goal (issue 22): every final evaluation at least 475. The JSON
(bench/results/cartpole-stability-<git>.json unless `--out`) has, per run, the final
evaluation, the evaluation curve during training, the step and loop seconds at which the
20-episode training mean first reached 475, start-up and env steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ENV = "CartPole-v1"
GOAL = 475.0


def _git() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "failed"


def run_one(seed: int, steps: int, workers: int, eval_every: int, final_episodes: int,
            extra: list[str], out: Path) -> dict[str, Any]:
    """One training run through the CLI and the final checkpoint's evaluation."""
    cmd = [sys.executable, "-m", "api.cli", "train", "--env", ENV, "--total-steps", str(steps),
           "--workers", str(workers), "--seed", str(seed), "--eval-every", str(eval_every),
           "--checkpoint-every", "1000000", "--out", str(out), *extra]
    record: dict[str, Any] = {"seed": seed, "total_steps": steps, "command": " ".join(cmd[1:]),
                              "load_before": [round(x, 2) for x in os.getloadavg()]}
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    record["wall_s"] = round(time.monotonic() - t0, 1)
    if done.returncode != 0:
        return {**record, "error": _last_line(done.stderr)}
    summary = json.loads(_last_line(done.stdout))
    evaluated = subprocess.run([sys.executable, "-m", "api.cli", "evaluate", summary["checkpoint"],
                                "--episodes", str(final_episodes)], cwd=REPO, capture_output=True, text=True)
    if evaluated.returncode != 0:
        return {**record, "error": "evaluate: " + _last_line(evaluated.stderr)}
    final = json.loads(_last_line(evaluated.stdout))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    reached = next(((r["step"], r["wall_s"]) for r in rows
                    if r.get("episode_return_mean") is not None and r["episode_return_mean"] >= GOAL), None)
    config = json.loads((out / "config.json").read_text())
    return {**record, "load_after": [round(x, 2) for x in os.getloadavg()],
            "final_eval": round(final["return_mean"], 1), "final_eval_std": round(final["return_std"], 1),
            "final_return_mean": summary["final_return_mean"],
            "steps_to_475": reached[0] if reached else None,
            "loop_s_to_475": round(reached[1], 2) if reached else None,
            "startup_s": summary["startup_s"], "env_steps_per_s": summary["env_steps_per_s"],
            "eval_curve": [(r["step"], round(r["eval_return_mean"], 1)) for r in rows if "eval_return_mean" in r],
            "config": {k: config[k] for k in ("workers", "envs_per_worker", "a2c", "policy", "tuned")}}


def table(runs: list[dict[str, Any]], steps: list[int]) -> str:
    """Seeds down, budgets across: the final evaluation of each run (20 episodes)."""
    lines = [f"{'seed':>4}" + "".join(f"{s // 1000:>9}k" for s in steps)]
    for seed in dict.fromkeys(r["seed"] for r in runs):
        cells = []
        for s in steps:
            r = next((r for r in runs if r["seed"] == seed and r["total_steps"] == s), None)
            cells.append(f"{'-' if r is None else ('error' if 'error' in r else r['final_eval']):>10}")
        lines.append(f"{seed:>4}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the plan (budgets outer, seeds inner), print the table, write the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m bench.cartpole_stability", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", nargs="+", type=int, default=[100_000, 150_000, 200_000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=10, help="updates between evaluations while training")
    p.add_argument("--final-episodes", type=int, default=20)
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/cartpole-stability-<git>.json)")
    args = p.parse_args(argv)
    git = _git()
    result: dict[str, Any] = {
        "bench": "cartpole_stability", "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": git,
        "goal": f"final eval (deterministic, {args.final_episodes} episodes) >= {GOAL} for every run",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "niceness": os.nice(0)},
        "plan": {"seeds": args.seeds, "steps": args.steps, "workers": args.workers,
                 "eval_every": args.eval_every, "final_episodes": args.final_episodes, "extra_flags": extra},
        "runs": [],
    }
    path = args.out or RESULTS / f"cartpole-stability-{git.replace('+', '-')}.json"
    with tempfile.TemporaryDirectory(prefix="a2c-cartpole-") as tmp:
        for steps in args.steps:
            for seed in args.seeds:
                run = run_one(seed, steps, args.workers, args.eval_every, args.final_episodes, extra,
                              Path(tmp) / f"{seed}-{steps}")
                result["runs"].append(run)
                print(f"seed {seed} {steps // 1000}k: " + (f"error {run['error']}" if "error" in run else
                      f"final eval {run['final_eval']} (475 at {run['steps_to_475']} steps, "
                      f"{run['loop_s_to_475']} s), {run['env_steps_per_s']} steps/s"), flush=True)
                ok = [r for r in result["runs"] if "error" not in r]
                result["met_goal"] = len(ok) == len(result["runs"]) and all(r["final_eval"] >= GOAL for r in ok)
                result["worst_final_eval"] = min((r["final_eval"] for r in ok), default=None)
                path.parent.mkdir(parents=True, exist_ok=True)  # saved after each run: a cut plan keeps its progress
                tmp_path = path.with_suffix(".json.tmp")
                tmp_path.write_text(json.dumps(result, indent=1) + "\n")
                tmp_path.replace(path)
    print(table(result["runs"], args.steps))
    print(f"met goal: {result['met_goal']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
