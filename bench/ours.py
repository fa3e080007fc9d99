"""Runner: this project through its own CLI (`python -m service.cli train`), one process tree.

The loop's numbers come from the run's own files: `metrics.jsonl` (one row per update; its
`wall_s` counts from the start of the training loop, and the last row's is taken before the
final evaluation and checkpoint) and `events.jsonl` (the `started` event marks the loop start).
Periodic evaluation and checkpoints are turned off: neither peer does them while training.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bench.procmon import Launched
from bench.record import RunRecord

REPO = Path(__file__).resolve().parent.parent


def train_command(env: str, steps: int, seed: int, workers: int, envs_per_worker: int | None,
                  out: Path, extra: list[str] | None = None) -> list[str]:
    """The `a2c train` command line of one benchmark run (envs per worker None: the job's
    default or the tuned table's)."""
    envs = ["--envs-per-worker", str(envs_per_worker)] if envs_per_worker else []
    return [sys.executable, "-m", "service.cli", "train", "--env", env, "--total-steps", str(steps),
            "--workers", str(workers), *envs, "--seed", str(seed),
            "--eval-every", "0", "--checkpoint-every", "1000000", "--out", str(out), *(extra or [])]


def parse_run(out: Path, launched_at: float, env: str, seed: int) -> RunRecord:
    """A RunRecord from a finished run directory and the CLI's summary line."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line]
    started = next(e["time"] for e in events if e["kind"] == "started")
    ray_up = next((e["time"] for e in events if e["kind"] == "ray"), None)
    config = json.loads((out / "config.json").read_text())
    last = rows[-1]
    extra = {
        "ray_connected_s": round(ray_up - launched_at, 2) if ray_up else None,
        "actors_ready_s": round(started - ray_up, 2) if ray_up else None,
        "max_policy_lag": max(r.get("policy_lag", 0) for r in rows),
        "updates": len(rows),
    }
    return RunRecord(
        "ours", env, seed, steps=int(last["step"]), loop_wall_s=float(last["wall_s"]),
        startup_s=started - launched_at,
        curve=[(r["wall_s"], r["step"], r["episode_return_mean"]) for r in rows],
        config={k: config[k] for k in ("workers", "envs_per_worker", "mode", "a2c", "policy", "tuned")},
        extra=extra)


def run_ours(env: str, steps: int, seed: int, workers: int = 2, envs_per_worker: int | None = None,
             extra: list[str] | None = None, timeout_s: float = 300.0, log_dir: Path | None = None,
             roles_every_s: float | None = None) -> RunRecord:
    """Train with the CLI in a subprocess and return its record, peak memory and load included."""
    with tempfile.TemporaryDirectory(prefix="a2c-bench-") as tmp:
        out = Path(tmp) / "run"
        log = (log_dir or Path(tmp)) / f"ours-{env}-s{seed}-w{workers}x{envs_per_worker}.log"
        proc = Launched(train_command(env, steps, seed, workers, envs_per_worker, out, extra),
                        log, cwd=REPO, roles_every_s=roles_every_s)
        code = proc.wait(timeout_s)
        try:
            record = parse_run(out, proc.launched_at, env, seed)
        except (OSError, StopIteration, KeyError, IndexError, json.JSONDecodeError) as exc:
            record = RunRecord("ours", env, seed, error=f"no results ({exc!r}): {proc.tail()}")
        if code != 0:
            record.error = f"exit {code}: {proc.tail()}"
        record.peak_rss_mb, record.peak_pss_mb = proc.monitor.peak_rss_mb, proc.monitor.peak_pss_mb
        record.load_before, record.load_after = proc.load_before, proc.load_after
        if roles_every_s:
            record.extra["rss_by_role"] = proc.monitor.roles
        return record
