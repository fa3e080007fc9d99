"""Load on the HTTP API while two jobs train: latency, errors, and the training throughput lost.

    python -m bench.load                          # starts its own `a2c serve`, 100 clients, 60 s
    python -m bench.load --duration 10 --quiet-s 10
    python -m bench.load --url http://127.0.0.1:8000 --token $A2C_API_TOKEN

Phases, in one invocation: two training jobs are submitted and warmed up; their env steps/s is
measured with no clients (quiet), then while `--clients` concurrent clients hit the API for
`--duration` seconds (load), then quiet again; `--repeat N` does load and quiet N times, and
reports each load window's drop against its two quiet neighbours and their median. Half the
clients (`--sse-fraction`) hold `GET /jobs/{id}/metrics/stream` open and read its events
(reconnecting when it ends); the rest poll `GET /jobs/{id}/metrics?since_step=` every
`--poll-interval` seconds (1 s by default, a dashboard's refresh; 0 polls back to back). Like
dashboards opening a job, clients first catch up on its history: in the first load window all
of it, in each later one the same number of steps, up to the current one.

Prints p50/p99/max latency per endpoint, the error count (any non-2xx or transport error; the
exit code is 1 when it is not 0), and the throughput drop: load vs the mean of the quiet
windows either side. Throughput comes from the jobs' own metrics rows (step and `wall_s`,
interpolated at the window edges), so it does not depend on how long a request takes under
load. It also prints the cores each part used in each window (the machine, these clients, and,
for a server it started, the server, its job drivers, learners, workers and Ray's daemons), to
tell a CPU share lost to the requests from a slower machine. `--clients 0` measures the drop's
noise floor: the same windows, no load.

The clients run in this process (aiohttp, on uvloop where installed; one session and connection
each, as independent clients have) on the same machine as the server and the training. They
stand for remote dashboards, which would cost this machine nothing, so by default they run at
nice 19 (`--clients-nice`), in the same scheduling group as the server: they get the CPU that
the training and the server leave, and what they take beyond that still counts in the drop.
`--clients-nice 0` makes them compete with the training as equals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

from bench import procmon

REPO = Path(__file__).resolve().parents[1]
JOB: dict[str, Any] = {"env": "CartPole-v1", "total_steps": 50_000_000, "workers": 1, "envs_per_worker": 8,
                       "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 50}
"""Each job: 1 worker + the learner (2 CPUs), trains until stopped."""
SSE_ID = re.compile(rb"^id:[ ]?([^\r\n]*)", re.MULTILINE)
"""An event's `id:` line (its value: the row's step)."""


@dataclass
class Samples:
    """Latencies (s) and errors of one endpoint."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    events: int = 0

    def summary(self) -> dict[str, Any]:
        """count, errors, p50/p99/max in ms (and events read, for streams)."""
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        out = {"count": len(lat), "errors": self.errors, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
               "max_ms": round(1000 * lat[-1], 1) if lat else None}
        if self.events:
            out["events"] = self.events
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`a2c serve` in its own process group, on a free port and a temporary data dir.

    It stays in this process's session: with Linux's autogroup scheduling (on by default), each
    session is one group that gets an equal share of the CPU, so nice values order only the
    processes of one session. Here the clients' nice (`--clients-nice`) ranks them below the
    training and the server's request handling (A2C_REQUEST_NICE); in a session of their own,
    they would compete with the whole server as an equal.
    """

    def __init__(self, ray_cpus: int, extra_env: dict[str, str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="a2c-load-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("A2C_") and k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=str(self.tmp / "ray"), A2C_RAY_NUM_CPUS=str(ray_cpus), PYTHONUNBUFFERED="1")
        env.update(extra_env or {})  # e.g. A2C_WARM_JOBS for one phase of a bench
        (self.tmp / "ray").mkdir()
        self.log = open(self.tmp / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(self.port),
                                      "--data-dir", str(self.tmp / "data")], cwd=REPO, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)

    def wait_ready(self, timeout: float = 180) -> None:
        """Until /readyz says ok (Ray joined, store open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.tmp / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready in {timeout}s; log: {self.tmp / 'server.log'}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its process group (its embedded Ray) if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


async def _get_json(session: aiohttp.ClientSession, path: str) -> Any:
    async with session.get(path) as r:
        r.raise_for_status()
        return await r.json()


async def _loop_start(session: aiohttp.ClientSession, job_id: str, samples: int = 5) -> float:
    """When the job's training loop started, on this process's clock: its metrics rows carry
    `wall_s`, seconds since then on its driver's monotonic clock. Each sample (time of the
    response minus the newest row's `wall_s`) overestimates it by the row's age; the least of a
    few quiet-time samples is within an update and a request (tens of ms)."""
    best = float("inf")
    for _ in range(samples):
        job = await _get_json(session, f"/jobs/{job_id}")
        if job["status"] != "RUNNING":
            raise RuntimeError(f"job {job_id} is {job['status']}: {job.get('error')}")
        rows = (await _get_json(session, f"/jobs/{job_id}/metrics?since_step={job['progress']['step'] - 1}"))["rows"]
        if rows:
            best = min(best, time.monotonic() - rows[-1]["wall_s"])
        await asyncio.sleep(0.2)
    if best == float("inf"):
        raise RuntimeError(f"job {job_id} has no metrics rows")
    return best


async def _rows(session: aiohttp.ClientSession, job_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The job's (wall_s, step) of every metrics row so far, in step order."""
    wall, steps, since = [], [], 0
    while rows := (await _get_json(session, f"/jobs/{job_id}/metrics?since_step={since}&limit=10000"))["rows"]:
        wall += [r["wall_s"] for r in rows]
        steps += [r["step"] for r in rows]
        since = rows[-1]["step"]
    return np.asarray(wall), np.asarray(steps, float)


def _cpu(server_pid: int | None) -> dict[str, float]:
    """CPU seconds used so far: by the whole machine, by this process's clients, and by role in
    the server's tree (the server, its job drivers, learners, workers, Ray's daemons) when it
    runs here."""
    out = {"clients": procmon.process_cpu_s(os.getpid()), **procmon.machine_cpu_s()}
    if server_pid is not None:
        out.update(procmon.roles_cpu_s(server_pid, root_role="server"))
    return out


async def _window(seconds: float, server_pid: int | None) -> tuple[float, float, dict[str, float]]:
    """Wait `seconds`; returns when it started and ended (this process's clock) and the cores
    each role used meanwhile. Env steps come later, from the jobs' rows: a request timed at the
    edges would err by its latency, seconds under load."""
    t0, c0 = time.monotonic(), _cpu(server_pid)
    await asyncio.sleep(seconds)
    t1, c1 = time.monotonic(), _cpu(server_pid)
    return t0, t1, {k: round((v - c0.get(k, 0.0)) / (t1 - t0), 2) for k, v in c1.items()}


def _steps_per_s(jobs: list[tuple[float, np.ndarray, np.ndarray]], t0: float, t1: float) -> float:
    """Env steps/s of the jobs together between t0 and t1 (this process's clock), interpolated
    in each job's rows; `jobs` holds (loop start, wall_s, step) per job."""
    total = 0.0
    for start, wall, steps in jobs:
        if t1 - start > wall[-1]:
            raise RuntimeError("a job has no rows past the end of the last window (did it stop?)")
        total += float(np.interp(t1 - start, wall, steps) - np.interp(t0 - start, wall, steps))
    return total / (t1 - t0)


def _client(url: str, headers: dict[str, str]) -> aiohttp.ClientSession:
    """One client: its own session and keep-alive connection."""
    return aiohttp.ClientSession(base_url=url, headers=headers, connector=aiohttp.TCPConnector(limit=1),
                                 timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=60))


async def _poller(url: str, headers: dict[str, str], job_id: str, since: int, until: float, interval: float,
                  samples: Samples) -> None:
    """GET /jobs/{id}/metrics?since_step= every `interval` s, as a dashboard polling for new rows
    (the first polls catch up from step `since`, 1000 rows at a time)."""
    async with _client(url, headers) as session:
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                async with session.get(f"/jobs/{job_id}/metrics", params={"since_step": since, "limit": 1000}) as r:
                    body = await r.read()
                    samples.latencies.append(time.monotonic() - t0)
                if r.status == 200:
                    since = json.loads(body)["next_since_step"]
                else:
                    samples.errors += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                samples.errors += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))


async def _streamer(url: str, headers: dict[str, str], job_id: str, since: int, until: float,
                    connect: Samples) -> None:
    """Hold the metrics stream open from step `since`, read its events, reconnect
    (Last-Event-ID) if it ends."""
    last = str(since)
    async with _client(url, headers) as session:
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                async with session.get(f"/jobs/{job_id}/metrics/stream", headers={"Last-Event-ID": last}) as r:
                    connect.latencies.append(time.monotonic() - t0)
                    if r.status != 200:
                        connect.errors += 1
                        await asyncio.sleep(1.0)  # as EventSource's retry would
                        continue
                    tail = b""
                    async for chunk in r.content.iter_any():
                        # Whole lines only; the ids are read from the chunk at once, not line by
                        # line in Python (a browser's EventSource parses in native code too).
                        text = tail + chunk
                        cut = text.rfind(b"\n") + 1
                        ids, tail = SSE_ID.findall(text, 0, cut), text[cut:]
                        if ids:
                            last, connect.events = ids[-1].decode(), connect.events + len(ids)
                        if time.monotonic() >= until:
                            return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                connect.errors += 1
                await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, url: str, server_pid: int | None = None) -> dict[str, Any]:
    """Submit two jobs, measure quiet / load / quiet, stop the jobs; returns the report."""
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with aiohttp.ClientSession(base_url=url, headers=headers) as control:
        job_ids = []
        for seed in range(2):
            async with control.post("/jobs", json={**JOB, "seed": seed}) as r:
                r.raise_for_status()
                job_ids.append((await r.json())["id"])
        try:
            deadline = time.monotonic() + args.start_timeout
            while True:  # warm up: both RUNNING and a few updates in
                jobs = [await _get_json(control, f"/jobs/{j}") for j in job_ids]
                if all(j["status"] == "RUNNING" and j["progress"]["step"] > 0 for j in jobs):
                    break
                if any(j["status"] in ("FAILED", "SUCCEEDED", "STOPPED") for j in jobs) or time.monotonic() > deadline:
                    raise RuntimeError(f"jobs did not start: {[(j['status'], j.get('error')) for j in jobs]}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(args.warmup_s)
            starts = [await _loop_start(control, j) for j in job_ids]
            windows = [("quiet", await _window(args.quiet_s, server_pid))]
            polls, streams = Samples(), Samples()
            n_sse = round(args.clients * args.sse_fraction)
            # Each window's clients open with the same amount of history to catch up on: the
            # first window's (all of it, from step 0). From step 0 every time, later windows
            # would read ever more rows, and their drops would not be alike.
            history = [(await _get_json(control, f"/jobs/{j}"))["progress"]["step"] for j in job_ids]
            for _ in range(args.repeat):  # load, then quiet again: each load window has two neighbours
                steps = [(await _get_json(control, f"/jobs/{j}"))["progress"]["step"] for j in job_ids]
                since = [max(0, step - h) for step, h in zip(steps, history)]
                until = time.monotonic() + args.duration
                tasks = [asyncio.create_task(_streamer(url, headers, job_ids[i % 2], since[i % 2], until, streams))
                         for i in range(n_sse)]
                tasks += [asyncio.create_task(_poller(url, headers, job_ids[i % 2], since[i % 2], until,
                                                      args.poll_interval, polls))
                          for i in range(args.clients - n_sse)]
                await asyncio.sleep(min(2.0, args.duration / 10))  # let every client connect first
                windows.append(("load", await _window(max(1.0, until - time.monotonic() - 0.5), server_pid)))
                # Pollers end on their own; a stream waits for its next event, so end it here.
                _, late = (await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()) + 5)
                           if tasks else (set(), set()))  # --clients 0: the noise floor of the drop
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                windows.append(("quiet", await _window(args.quiet_s, server_pid)))
            await asyncio.sleep(2.0)  # the rows of the last updates reach the store
            jobs = [(start, *await _rows(control, j)) for start, j in zip(starts, job_ids)]
            sps = [_steps_per_s(jobs, t0, t1) for _, (t0, t1, _) in windows]
        finally:
            for j in job_ids:
                async with control.post(f"/jobs/{j}/stop"):
                    pass
    # Each load window against the mean of the quiet windows before and after it.
    quiet = [(sps[k - 1] + sps[k + 1]) / 2 for k in range(1, len(sps), 2)]
    drops = [round(100 * (1 - sps[k] / q), 1) if q > 0 else None for k, q in zip(range(1, len(sps), 2), quiet)]
    measured = [d for d in drops if d is not None]  # a stalled quiet window has no drop to compare
    return {
        "clients": args.clients, "sse_clients": n_sse, "duration_s": args.duration,
        "poll_interval_s": args.poll_interval, "repeat": args.repeat, "clients_nice": args.clients_nice,
        "endpoints": {"GET /jobs/{id}/metrics": polls.summary(),
                      "GET /jobs/{id}/metrics/stream (connect)": streams.summary()},
        "errors": polls.errors + streams.errors,
        "windows": [{"phase": name, "env_steps_per_s": round(v, 1), "cores_used": cores}
                    for (name, (_, _, cores)), v in zip(windows, sps)],
        "drops_pct": drops,
        "throughput_drop_pct": round(statistics.median(measured), 1) if measured else None,
        "load_average": os.getloadavg(),
    }


def _print(report: dict[str, Any]) -> None:
    print(f"{report['clients']} clients ({report['sse_clients']} on the SSE stream, the rest polling every "
          f"{report['poll_interval_s']} s; nice {report['clients_nice']}) for {report['duration_s']} s, "
          f"{report['repeat']} time(s)")
    print(f"{'endpoint':42} {'count':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, s in report["endpoints"].items():
        print(f"{name:42} {s['count']:>7} {s['errors']:>6} {s['p50_ms']!s:>8} {s['p99_ms']!s:>8} {s['max_ms']!s:>8}"
              + (f"   ({s['events']} events read)" if "events" in s else ""))
    windows = report["windows"]
    for k, drop in zip(range(1, len(windows), 2), report["drops_pct"]):
        print("training env steps/s (2 jobs): " + " -> ".join(
            f"{w['phase']} {w['env_steps_per_s']}" for w in windows[k - 1:k + 2]) + f"; drop {drop}%")
    print(f"drop (median of {len(report['drops_pct'])}, each load window vs its two quiet neighbours): "
          f"{report['throughput_drop_pct']}%")

    def mean_cores(phase: str, role: str) -> float:
        values = [w["cores_used"].get(role, 0.0) for w in windows if w["phase"] == phase]
        return round(sum(values) / len(values), 2)

    print("cores used (quiet -> load, mean over windows): " + "; ".join(
        f"{role} {mean_cores('quiet', role)} -> {mean_cores('load', role)}" for role in windows[1]["cores_used"]))
    print(f"errors: {report['errors']}; load average at the end: "
          + " ".join(f"{x:.2f}" for x in report["load_average"]))
    print(json.dumps(report))


def _run_loop(coro: Any) -> Any:
    """Run the clients' coroutine on uvloop where it is installed (as the server does): the
    clients share the machine with the training, and asyncio's own loop costs them more CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, start a server unless --url, run the phases, print the report."""
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an existing server (default: start `a2c serve` on a free port)")
    p.add_argument("--token", default=os.environ.get("A2C_API_TOKEN"), help="bearer token (default A2C_API_TOKEN)")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--sse-fraction", type=float, default=0.5, help="share of clients on the SSE stream")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between one poller's requests")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of each load window")
    p.add_argument("--repeat", type=int, default=1,
                   help="load windows, each followed by a quiet one; the drop reported is the median")
    p.add_argument("--quiet-s", type=float, default=30.0, help="seconds of each no-load window")
    p.add_argument("--warmup-s", type=float, default=30.0,
                   help="seconds of training before measuring (after 5 s, the first quiet window "
                        "read the lowest in 3 of 4 runs)")
    p.add_argument("--ray-cpus", type=int, default=4, help="CPUs of the embedded Ray of a started server")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--clients-nice", type=int, default=19, choices=range(20), metavar="0-19",
                   help="nice value of the clients (default 19: they stand for remote dashboards, so they get "
                        "the CPU the training and the server leave; 0: they compete with the training as equals)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1 (load windows to measure)")
    server = None if args.url else Server(args.ray_cpus)
    try:
        if server is not None:
            server.wait_ready()
        # After the server started: it and its Ray keep their own priority. The clients run in
        # this thread (and in threads it starts, which inherit its nice value).
        os.setpriority(os.PRIO_PROCESS, 0, args.clients_nice)
        report = _run_loop(run(args, args.url or server.url, server and server.proc.pid))
    finally:
        if server is not None:
            server.stop()
    _print(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
