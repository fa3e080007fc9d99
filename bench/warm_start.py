"""Time from `POST /jobs` to the job's first metrics row on a running `a2c serve`, warm and cold.

    python -m bench.warm_start                        # 5 jobs per phase
    python -m bench.warm_start --jobs 3 --out /tmp/warm.json

Each phase starts `a2c serve` on a loopback port (its own embedded Ray, a temporary data dir):

- warm: the default, a spare driver with warm actors waits for the next job (A2C_WARM_JOBS on);
- cold: A2C_WARM_JOBS=false, so each job starts its driver, rollout workers and learner itself.

Then, `--jobs` times, one after another: wait until the server is idle (its spare warm again,
or nothing running), POST a small CartPole job (2 workers x 16 envs, the tuned entry), and poll
`GET /jobs/{id}/metrics?limit=1` every 10 ms until it returns a row. Reported per job: the POST's
own latency, POST to the first metrics row and POST to SUCCEEDED (client side, on loopback);
and per phase their median. The machine's load average is recorded before each phase.

Writes bench/results/warm-start-<commit>.json unless `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.act_latency import _git, _load, _settle, busy_processes
from bench.load import Server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
JOB: dict[str, Any] = {"env": "CartPole-v1", "total_steps": 20_480, "workers": 2, "seed": 0,
                       "eval_every": 0, "eval_episodes": 2, "checkpoint_every": 1000, "video_every": 0}
"""A small job: two rollout workers and a learner, about a second of training."""
PHASES = {"warm": {}, "cold": {"A2C_WARM_JOBS": "false"}}


def time_job(client: httpx.Client, poll_s: float = 0.01, timeout: float = 300) -> dict[str, Any]:
    """POST one job and follow it: seconds from sending the POST to its answer, to the first
    metrics row and to SUCCEEDED."""
    t0 = time.perf_counter()
    job_id = client.post("/jobs", json=JOB).raise_for_status().json()["id"]
    posted = time.perf_counter() - t0
    first_row = None
    deadline = time.monotonic() + timeout
    while first_row is None and time.monotonic() < deadline:
        if client.get(f"/jobs/{job_id}/metrics", params={"limit": 1}).raise_for_status().json()["rows"]:
            first_row = time.perf_counter() - t0
        else:
            time.sleep(poll_s)
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.1)
    if job["status"] != "SUCCEEDED" or first_row is None:
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    return {"job": job_id, "post_s": round(posted, 3), "post_to_first_row_s": round(first_row, 3),
            "post_to_succeeded_s": round(time.perf_counter() - t0, 2)}


def run_phase(name: str, env: dict[str, str], jobs: int) -> dict[str, Any]:
    """One server with `env`, `jobs` jobs one after another; their timings and medians."""
    phase: dict[str, Any] = {"env": env, "load_before": _load()}
    server = Server(ray_cpus=4, extra_env=env)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            runs = []
            for _ in range(jobs):
                _settle(client, quiet_s=3)
                runs.append(time_job(client))
                print(name, runs[-1], flush=True)
            phase["readyz_warm"] = client.get("/readyz").json().get("checks", {}).get("warm")
    finally:
        server.stop()
    phase["jobs"] = runs
    phase["median"] = {key: round(statistics.median(r[key] for r in runs), 3)
                       for key in ("post_s", "post_to_first_row_s", "post_to_succeeded_s")}
    phase["load_after"] = _load()
    return phase


def main() -> None:
    """Run both phases and write the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=5, help="jobs per phase, one after another")
    p.add_argument("--phases", nargs="+", choices=sorted(PHASES), default=list(PHASES))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    report: dict[str, Any] = {
        "bench": "warm_start", "commit": _git(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "job": JOB, "busy_at_start": busy_processes(),
        "note": "client side, on loopback; each job POSTed once the previous one ended and the server was idle",
        "phases": {name: run_phase(name, PHASES[name], args.jobs) for name in args.phases},
    }
    out = args.out or RESULTS / f"warm-start-{report['commit']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({name: ph["median"] for name, ph in report["phases"].items()}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
