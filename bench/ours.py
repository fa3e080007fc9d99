"""Runner: this project through its own CLI (`python -m api.cli train`), one process tree.

The loop's numbers come from the run's own files: `metrics.jsonl` (one row per update; its
`wall_s` counts from the start of the training loop, and the last row's is taken before the
final evaluation and checkpoint) and `events.jsonl` (the `started` event marks the loop start).
Periodic evaluation and checkpoints are turned off: neither peer does them while training.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from bench.procmon import Launched
from bench.record import RunRecord

REPO = Path(__file__).resolve().parent.parent
RAY_UP = re.compile(r"up in ([0-9.]+)s$")
"""The end of the CLI's "ray" event: the seconds `connect` took."""


def train_command(env: str, steps: int, seed: int, workers: int | None, envs_per_worker: int | None,
                  out: Path, extra: list[str] | None = None) -> list[str]:
    """The `a2c train` command line of one benchmark run (workers or envs per worker None: the
    job's default or the tuned table's)."""
    layout = [*(["--workers", str(workers)] if workers else []),
              *(["--envs-per-worker", str(envs_per_worker)] if envs_per_worker else [])]
    return [sys.executable, "-m", "api.cli", "train", "--env", env, "--total-steps", str(steps),
            *layout, "--seed", str(seed),
            "--eval-every", "0", "--checkpoint-every", "1000000", "--out", str(out), *(extra or [])]


def parse_run(out: Path, launched_at: float, env: str, seed: int) -> RunRecord:
    """A RunRecord from a finished run directory and the CLI's summary line."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line]
    started = next(e["time"] for e in events if e["kind"] == "started")
    ray_event = next((e for e in events if e["kind"] == "ray"), None)
    ray_up = ray_event["time"] if ray_event else None
    # The CLI's "ray" event ends "up in 4.12s": how long connecting (an embedded ray.init) took.
    took = RAY_UP.search(ray_event["message"]) if ray_event else None
    ray_init_s = float(took.group(1)) if took else None
    config = json.loads((out / "config.json").read_text())
    last = rows[-1]
    extra = {
        "ray_connected_s": round(ray_up - launched_at, 2) if ray_up else None,
        "ray_init_s": ray_init_s,
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


@contextlib.contextmanager
def running_cluster(num_cpus: int, log_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node cluster (`ray start --head --block` in its own session, its own temp dir and
    auth token) for runs that attach to it; yields (address, the env to give those runs)."""
    root = Path(tempfile.mkdtemp(prefix="a2c-ray-", dir="/tmp"))  # short: socket paths are capped
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = log_dir / "ray-head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port),
                                 "--num-cpus", str(num_cpus), "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
                                 "--temp-dir", str(root / "ray"), "--include-dashboard", "false",
                                 "--disable-usage-stats"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head failed; see {log}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)


def run_ours(env: str, steps: int, seed: int, workers: int | None = 2, envs_per_worker: int | None = None,
             extra: list[str] | None = None, timeout_s: float = 300.0, log_dir: Path | None = None,
             roles_every_s: float | None = None, proc_env: dict[str, str] | None = None,
             track_processes: bool = False) -> RunRecord:
    """Train with the CLI in a subprocess and return its record, peak memory and load included
    (with `track_processes`, also each process's CPU seconds up to the first env step)."""
    with tempfile.TemporaryDirectory(prefix="a2c-bench-") as tmp:
        out = Path(tmp) / "run"
        log = (log_dir or Path(tmp)) / f"ours-{env}-s{seed}-w{workers}x{envs_per_worker}.log"
        proc = Launched(train_command(env, steps, seed, workers, envs_per_worker, out, extra),
                        log, cwd=REPO, env=proc_env, roles_every_s=roles_every_s,
                        track_processes=track_processes)
        code = proc.wait(timeout_s)
        try:
            record = parse_run(out, proc.launched_at, env, seed)
        except (OSError, StopIteration, KeyError, IndexError, json.JSONDecodeError) as exc:
            record = RunRecord("ours", env, seed, error=f"no results ({exc!r}): {proc.tail()}")
        if code != 0:
            record.error = f"exit {code}: {proc.tail()}"
        record.peak_rss_mb, record.peak_pss_mb = proc.monitor.peak_rss_mb, proc.monitor.peak_pss_mb
        record.process_wall_s = proc.wall_s
        connected, ray_init = record.extra.get("ray_connected_s"), record.extra.get("ray_init_s")
        if connected is not None and ray_init is not None and record.startup_s:
            # The machine's CPU seconds from the start of connecting to the first env step: on a
            # 2-core machine, Ray + actors cannot take less wall time than half of it.
            busy = proc.monitor.machine_busy_s(proc.launched_at + connected - ray_init,
                                               proc.launched_at + record.startup_s)
            record.extra["ray_and_actors_cpu_s"] = round(busy, 2) if busy is not None else None
        if track_processes and record.startup_s:
            # Each process's CPU seconds from its start to the first env step (the Ray daemons
            # and actors start after `ray.init` begins; the driver counts from launch).
            record.extra["startup_cpu_by_process_s"] = proc.monitor.cpu_by_process_s(
                proc.launched_at + record.startup_s)
            loop_start = proc.launched_at + record.startup_s
            record.extra["loop_cpu_s"] = proc.monitor.tree_cpu_s(loop_start, loop_start + record.loop_wall_s)
        record.load_before, record.load_after = proc.load_before, proc.load_after
        if roles_every_s:
            record.extra["rss_by_role"] = proc.monitor.roles
        return record
