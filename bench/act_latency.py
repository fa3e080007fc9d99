"""Latency of `POST /jobs/{id}/checkpoints/{ckpt}/act` on a real `a2c serve`, idle and beside training.

    python -m bench.act_latency                      # 500 requests per batch size and phase
    python -m bench.act_latency --requests 200 --out /tmp/act.json

It starts `a2c serve` on a loopback port (its own embedded Ray, a temporary data dir), trains a
short CartPole job to get a checkpoint, then times `--requests` act requests one after another
(one keep-alive client, as a controller stepping an env would) for a batch of 1 and of 64
observations:

- idle: nothing else runs in the server (measured once its spare driver is warm again);
- training: while a CartPole job trains (1 rollout worker, 8 envs, until stopped). Its env
  steps/s is measured in a quiet window before and after, and during the act requests, to
  show what serving takes from training.

For each phase and batch size: p50, p99, mean and max latency (ms, client side: request sent
to response read), and the cores the server process used meanwhile (the act requests run in
it; torch there is single-threaded). The machine's load average is recorded at each phase
(other work on the machine shows there). Last, in this process, the policy's forward pass alone
(`service.serving.policy_actions`) with torch at 1 and at 2 threads, for batches of 1, 64 and
1024: what more threads would buy a request.

Writes bench/results/act-latency-<commit>.json unless `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import procmon
from bench.load import Server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHORT_JOB: dict[str, Any] = {"env": "CartPole-v1", "total_steps": 20_480, "workers": 1, "envs_per_worker": 8,
                             "eval_every": 0, "eval_episodes": 2, "checkpoint_every": 1000}
"""The job whose final checkpoint is served."""
TRAINING_JOB: dict[str, Any] = {**SHORT_JOB, "total_steps": 50_000_000, "checkpoint_every": 100_000}
"""The job that trains beside the act requests (1 worker + the learner), until stopped."""
BATCHES = (1, 64)


def _git() -> str:
    import subprocess
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_processes(seconds: float = 2.0, min_cores: float = 0.2) -> list[dict[str, Any]]:
    """The processes using at least `min_cores` over `seconds` (pid, nice, cores, command), the
    other work on the machine while the bench runs (e.g. a benchmark in the background)."""
    def sample() -> dict[int, float]:
        return {int(e.name): procmon.process_cpu_s(int(e.name)) for e in os.scandir("/proc") if e.name.isdigit()}
    before = sample()
    time.sleep(seconds)
    after = sample()
    busy = []
    for pid, cpu in after.items():
        cores = (cpu - before.get(pid, cpu)) / seconds
        if cores >= min_cores:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
            except OSError:
                continue
            busy.append({"pid": pid, "nice": nice, "cores": round(cores, 2), "command": cmd.strip()[:100]})
    return sorted(busy, key=lambda b: -b["cores"])


def _observations(batch: int, seed: int) -> list[list[float]]:
    """CartPole-like observations (the scale of its state variables)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, 4)) * [1.0, 1.5, 0.15, 1.5]).astype(np.float32).tolist()


def _wait_job(client: httpx.Client, job_id: str, done, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if done(job):
            return job
        if job["status"] in ("FAILED", "STOPPED"):
            raise RuntimeError(f"job {job_id} is {job['status']}: {job.get('error')}")
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} did not get there in {timeout}s")


def _settle(client: httpx.Client, timeout: float = 120, quiet_s: float = 5) -> None:
    """Wait until the server's spare driver is warm again (a job that ends makes a new one,
    seconds of CPU: not what an idle server does), then `quiet_s` more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        warm = client.get("/readyz").json().get("checks", {}).get("warm", "")
        if "ready" in warm or "off" in warm:
            break
        time.sleep(1)
    time.sleep(quiet_s)


def _step(client: httpx.Client, job_id: str) -> tuple[float, int]:
    return time.monotonic(), client.get(f"/jobs/{job_id}").raise_for_status().json()["progress"]["step"]


def _steps_per_s(a: tuple[float, int], b: tuple[float, int]) -> float:
    return round((b[1] - a[1]) / (b[0] - a[0]), 1)


def time_requests(client: httpx.Client, path: str, batch: int, requests: int, server_pid: int) -> dict[str, Any]:
    """`requests` act requests of `batch` observations, one after another: latency percentiles
    (ms) and the cores the server process used meanwhile."""
    bodies = [json.dumps({"observations": _observations(batch, seed)}).encode() for seed in range(16)]
    headers = {"content-type": "application/json"}
    for body in bodies[:5]:  # warm up: the connection, the cache
        client.post(path, content=body, headers=headers).raise_for_status()
    latencies = []
    cpu0, t0 = procmon.process_cpu_s(server_pid), time.monotonic()
    for i in range(requests):
        start = time.perf_counter()
        r = client.post(path, content=bodies[i % len(bodies)], headers=headers)
        r.read()
        latencies.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise RuntimeError(f"act answered {r.status_code}: {r.text[:500]}")
    wall = time.monotonic() - t0
    ms = np.asarray(latencies) * 1000
    return {"batch": batch, "requests": requests, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2),
            "max_ms": round(float(ms.max()), 2), "requests_per_s": round(requests / wall, 1),
            "server_cores": round((procmon.process_cpu_s(server_pid) - cpu0) / wall, 2)}


def forward_threads(archive: Path, repeats: int = 200) -> list[dict[str, Any]]:
    """The policy's forward pass alone (`policy_actions`, in this process) at 1 and 2 torch
    threads: median ms per call for batches of 1, 64 and 1024."""
    import torch

    from learner.checkpoint import read_policy
    from service.serving import policy_actions
    policy = read_policy(archive).policy()
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        row: dict[str, Any] = {"torch_threads": threads}
        for batch in (1, 64, 1024):
            obs = np.asarray(_observations(batch, 0), dtype=np.float32)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                policy_actions(policy, obs, deterministic=True)
                times.append(time.perf_counter() - start)
            row[f"batch_{batch}_ms"] = round(1000 * statistics.median(times), 3)
        out.append(row)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, train the served job, run the phases; the report."""
    report: dict[str, Any] = {
        "bench": "act_latency", "commit": _git(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "requests_per_batch": args.requests, "load_start": _load(), "busy_at_start": busy_processes(),
        "note": ("latency is client side, on loopback, one request at a time; load averages are the "
                 "machine's (1, 5, 15 min) and include any other work on it"),
    }
    server = Server(ray_cpus=4)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            served = client.post("/jobs", json=SHORT_JOB).raise_for_status().json()["id"]
            job = _wait_job(client, served, lambda j: j["status"] == "SUCCEEDED")
            ckpt = job["summary"]["checkpoint"]
            path = f"/jobs/{served}/checkpoints/{ckpt}/act"
            report["served"] = {"job": SHORT_JOB, "checkpoint": ckpt}
            _settle(client)
            report["idle"] = {"load_before": _load(), "results": [
                time_requests(client, path, batch, args.requests, server.proc.pid) for batch in BATCHES]}
            report["idle"]["load_after"] = _load()

            trainer = client.post("/jobs", json=TRAINING_JOB).raise_for_status().json()["id"]
            _wait_job(client, trainer, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] > 0)
            time.sleep(args.warmup_s)
            q0 = _step(client, trainer)
            time.sleep(args.quiet_s)
            q1 = _step(client, trainer)
            load_before = _load()
            results = [time_requests(client, path, batch, args.requests, server.proc.pid) for batch in BATCHES]
            a1 = _step(client, trainer)
            time.sleep(args.quiet_s)
            q2 = _step(client, trainer)
            report["training"] = {
                "job": TRAINING_JOB, "load_before": load_before, "load_after": _load(), "results": results,
                "training_steps_per_s": {"quiet_before": _steps_per_s(q0, q1), "during_act": _steps_per_s(q1, a1),
                                         "quiet_after": _steps_per_s(a1, q2)}}
            client.post(f"/jobs/{trainer}/stop")
            _wait_job(client, trainer, lambda j: j["status"] in ("STOPPED", "SUCCEEDED"), timeout=120)
        archive = server.tmp / "data" / "jobs" / served / "checkpoints" / f"{ckpt}.tar.gz"
        report["forward_only"] = forward_threads(archive)
    finally:
        server.stop()
    report["load_end"] = _load()
    return report


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print and write the JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.act_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=500, help="act requests per batch size and phase")
    p.add_argument("--warmup-s", type=float, default=15.0, help="training before the first quiet window")
    p.add_argument("--quiet-s", type=float, default=20.0, help="seconds of each quiet training window")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/act-latency-<commit>.json)")
    args = p.parse_args(argv)
    report = run(args)
    out = args.out or RESULTS / f"act-latency-{report['commit']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
