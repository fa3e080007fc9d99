"""Pong learning curve: the tuned Atari job on PongNoFrameskip-v4 (no sticky actions) to 10M
frames (2.5M agent steps), with the mean of the last 100 whole games against frames.

The job runs through the real `Trainer` on an embedded Ray, in this process; every finished
game (full game, raw score, as the workers report them) is kept with the step and loop time
at which its update was recorded. The JSON is rewritten every minute while the run goes on,
so that a long run can be followed, and a plot (matplotlib) is drawn at the end. A run that was
stopped (a killed process, a rebooted machine) continues with `--resume` from the newest
checkpoint in its run directory, with the games and rows recorded past it dropped: a run longer
than one sitting can be made in parts.

    nohup nice -n 10 python -m bench.atari_pong --out bench/results/pong-2core.json > pong.log 2>&1 &
    python -m bench.atari_pong --resume --out bench/results/pong-2core.json   # after a stop
    python -m bench.atari_pong --plot-only --out bench/results/pong-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LAUNCHED_AT = time.time()
REPO = Path(__file__).resolve().parents[1]

GOAL = 18.0
"""The issue's target for Pong: a mean of the last 100 whole games of at least 18 within 10M
frames. Other games get no goal (and a plot scaled to their scores)."""
WINDOW = 100
FRAMES_PER_STEP = 4


def window_means(returns: list[float], window: int = WINDOW) -> list[float | None]:
    """The mean of the last `window` values at each point (None until `window` are there)."""
    out, total = [], 0.0
    for i, r in enumerate(returns):
        total += r
        if i >= window:
            total -= returns[i - window]
        out.append(total / window if i + 1 >= window else None)
    return out


def goal_of(env: str) -> float | None:
    """The goal of the mean of the last 100 games for this env id: Pong's, else None."""
    return GOAL if "Pong" in env else None


def summarize(games: list[list[float]], goal: float | None) -> dict[str, Any]:
    """Headline numbers from [(step, loop seconds, return, length), ...] in finishing order."""
    means = window_means([g[2] for g in games])
    reached = next(((g[0], g[1]) for g, m in zip(games, means)
                    if goal is not None and m is not None and m >= goal), None)
    return {
        "games": len(games),
        "last_100_mean": means[-1] if means else None,
        "best_100_mean": max((m for m in means if m is not None), default=None),
        "goal": goal,
        "frames_to_goal": reached[0] * FRAMES_PER_STEP if reached else None,
        "loop_s_to_goal": round(reached[1], 1) if reached else None,
    }


def spec_difference(spec: dict[str, Any], other: dict[str, Any]) -> str:
    """The fields where a job spec differs from `other`, as "a2c.learning_rate_schedule=linear"
    (nested sections flattened with dots), for telling two runs apart on one plot. `tuned`, the
    list of fields the tuned table filled, is left out: it differs whenever the fields do."""
    from service.run.tracking import flatten_spec
    a, b = (flatten_spec({k: v for k, v in s.items() if k != "tuned"}) for s in (spec, other))
    return ", ".join(f"{k}={a.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)) or "same spec"


def mean_curve(games: list[list[float]]) -> tuple[list[float], list[float]]:
    """Frames (millions) and the mean of the last `WINDOW` games there, from the first full window."""
    means = window_means([g[2] for g in games])
    return ([g[0] * FRAMES_PER_STEP / 1e6 for g, m in zip(games, means) if m is not None],
            [m for m in means if m is not None])


def plot(result: dict[str, Any], path: Path, compare: dict[str, Any] | None = None) -> None:
    """Game returns and their 100-game mean against frames, with the goal line. `compare` adds a
    100-game mean in black: a `bench.sb3_atari` record's (SB3's Monitor: whole games), or an
    earlier record of this bench's, labelled with the spec fields where it differs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = result["games"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter([g[0] * FRAMES_PER_STEP / 1e6 for g in games], [g[2] for g in games], s=3, alpha=0.25,
               color="tab:blue", label="game return")
    ax.plot(*mean_curve(games), color="tab:red", label=f"mean of the last {WINDOW} games")
    if compare is not None and "games" in compare:  # an earlier run of this bench
        ax.plot(*mean_curve(compare["games"]), color="black", linewidth=1,
                label=f"earlier run, {spec_difference(compare['spec'], result['spec'])}: mean of the last {WINDOW} games")
    elif compare is not None:
        points = [(c[1] * FRAMES_PER_STEP / 1e6, c[2]) for c in compare["curve"] if c[2] is not None]
        threads = compare["config"].get("torch_threads")
        ax.plot([f for f, _ in points], [m for _, m in points], color="black", linewidth=1,
                label=f"SB3 A2C ({threads} torch thread), mean of the last {WINDOW} games")
    goal = goal_of(result["env"])
    if goal is not None:
        ax.axhline(goal, color="gray", linestyle="--", linewidth=1, label=f"goal {goal:g}")
        ax.set_ylim(-22, 22)
    s = result["summary"]
    wall = result.get("wall_s")
    last = f"{s['last_100_mean']:.1f}" if s["last_100_mean"] is not None else "-"
    ax.set_title(f"{result['env']} (seed {result['seed']}): last-100 mean {last} after {s['games']} games"
                 + (f", {wall / 3600:.2f} h" if wall else ""), fontsize=10)
    ax.set_xlabel("frames (millions)")
    ax.set_ylabel("return (whole game, raw score)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)  # the curves start at the bottom left and rise to the right
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def resume_point(result: dict[str, Any], run_dir: Path | None = None):
    """For `--resume`: the newest checkpoint in the run's directory (`run_dir` if given, which
    is then recorded), after dropping from `result` the games and rows recorded past its step;
    returns it with the loop time recorded at that step, from which the loop times go on."""
    from service.run.checkpoints import open_checkpoint
    if run_dir is not None:
        result["run_dir"] = str(run_dir.resolve())
    if "run_dir" not in result:
        raise SystemExit("--resume: this record names no run directory (made before --resume existed); "
                         "pass --run-dir with its checkpoints")
    _, checkpoint = open_checkpoint(result["run_dir"])
    step = checkpoint.state.step
    result["games"] = [g for g in result["games"] if g[0] <= step]
    result["rows"] = [r for r in result["rows"] if r["step"] <= step]
    loop_s = max([g[1] for g in result["games"]] + [r["wall_s"] for r in result["rows"]], default=0.0)
    if "parts" not in result:  # a record of before --resume: wall time written at the end only
        result["parts"] = [{"commit": result["commit"], "command": result["command"], "from_step": 0,
                            "wall_s": result.get("wall_s") or loop_s,
                            **({} if result.get("wall_s") else {"wall_s_is": "its loop time at the checkpoint"})}]
    return checkpoint, loop_s


def main(argv: list[str] | None = None, launched_at: float = LAUNCHED_AT) -> None:
    """Train, record every game, write the JSON (and the plot at the end). The part's wall time
    counts from `launched_at`: by default this module's import, i.e. the process's launch."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", help="default PongNoFrameskip-v4")
    p.add_argument("--frames", type=int, help="default 10M")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--spec", help="JSON of job spec fields over the tuned ones")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the embedded Ray")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="the job's checkpoints (default runs/bench/<--out's name> in the repository, which "
                   "git ignores); kept in the JSON for --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run of --out from the newest checkpoint in its run directory "
                   "with the run's own spec, seed and frames (--env, --frames, --seed and --spec are refused)")
    p.add_argument("--plot-only", action="store_true", help="redraw the plot of an existing --out JSON")
    p.add_argument("--compare", type=Path, default=None,
                   help="with --plot-only: a bench.sb3_atari record, or an earlier record of this bench, "
                   "whose 100-game mean is drawn beside")
    args = p.parse_args(argv)
    run_fields = {"--env": args.env, "--frames": args.frames, "--seed": args.seed, "--spec": args.spec}
    if args.resume and any(value is not None for value in run_fields.values()):
        p.error(f"--resume continues the run with its own settings: leave out "
                f"{', '.join(flag for flag, value in run_fields.items() if value is not None)}")
    args.env, args.frames = args.env or "PongNoFrameskip-v4", args.frames or 10_000_000
    args.seed, args.spec = args.seed if args.seed is not None else 0, args.spec or "{}"
    if args.plot_only:
        compare = json.loads(args.compare.read_text()) if args.compare else None
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"), compare)
        return

    from service.cluster import connect
    from service.run.spec import build_spec
    from service.run.loop import Trainer
    from service.run.sinks import NullSink

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    command = " ".join([sys.executable.rsplit("/", 1)[-1], "-m", "bench.atari_pong", *(argv or sys.argv[1:])])
    resume, loop_offset = None, 0.0
    if args.resume:
        result = json.loads(args.out.read_text())
        resume, loop_offset = resume_point(result, args.run_dir)
        spec = build_spec(result["spec"])
        result["parts"].append({"commit": commit, "command": command, "from_step": resume.state.step, "wall_s": 0.0})
    else:
        spec = build_spec({"env": args.env, "total_steps": args.frames // FRAMES_PER_STEP, "seed": args.seed,
                           **json.loads(args.spec)})
        result = {
            "bench": "atari_pong", "env": args.env, "seed": args.seed, "frames": args.frames,
            "spec": spec.model_dump(mode="json"), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "commit": commit, "command": command,
            "run_dir": str((args.run_dir or REPO / "runs" / "bench" / args.out.stem).resolve()),
            "parts": [{"commit": commit, "command": command, "from_step": 0, "wall_s": 0.0}],
            "games": [], "rows": [],
        }

    def write(final: bool = False) -> None:
        result["parts"][-1]["wall_s"] = round(time.time() - launched_at, 1)
        result["wall_s"] = round(sum(part["wall_s"] for part in result["parts"]), 1)
        result["summary"] = summarize(result["games"], goal_of(result["env"]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result) + "\n")
        if final:
            plot(result, args.out.with_suffix(".png"))

    class Recorder(NullSink):
        """Keeps a thinned metrics row every 50 updates; rewrites the JSON every minute."""

        last_write = time.monotonic()

        def event(self, kind: str, message: str) -> None:
            print(f"[{kind}] {message}", flush=True)

        def metrics(self, row: dict[str, Any]) -> None:
            if row["step"] % (50 * spec.a2c.steps_per_batch) == 0 or "eval_return_mean" in row:
                result["rows"].append({k: row.get(k) for k in (
                    "step", "wall_s", "env_steps_per_s", "episode_return_mean", "eval_return_mean", "entropy",
                    "value_loss", "explained_variance", "learning_rate", "grad_norm")})
                result["rows"][-1]["wall_s"] += loop_offset
            if time.monotonic() - self.last_write > 60:
                self.last_write = time.monotonic()
                write()
                s = result["summary"]
                print(f"step {row['step']} frames {row['step'] * FRAMES_PER_STEP / 1e6:.2f}M games {s['games']} "
                      f"last-100 {s['last_100_mean']} sps {row['env_steps_per_s']:.0f} "
                      f"loop {row['wall_s'] + loop_offset:.0f}s", flush=True)

    class GameRecordingTrainer(Trainer):
        """The Trainer, also keeping every finished game (the metrics rows keep a 20-game mean)."""

        def _row(self, stats, episodes, loop_t0):
            row = super()._row(stats, episodes, loop_t0)
            for e in episodes:
                result["games"] += [[row.step, row.wall_s + loop_offset, float(r), int(n)]
                                    for r, n in zip(e.returns, e.lengths)]
            return row

    connect(None, num_cpus=args.num_cpus or max(os.cpu_count() or 1, spec.cpus_needed))
    trainer = GameRecordingTrainer(spec, Path(result["run_dir"]), Recorder(), resume=resume)
    summary = trainer.run()
    result["trainer_summary"] = summary
    result["loop_s"] = result["rows"][-1]["wall_s"] if result["rows"] else None
    write(final=True)
    print(json.dumps(result["summary"]), flush=True)


if __name__ == "__main__":
    main()
