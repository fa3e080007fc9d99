"""Fixtures for the API tests: real `a2c serve` processes on loopback ports, each with its own
embedded Ray, driven over HTTP with httpx.

One server is shared by the whole session; the restart and auth tests start their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from service.jobs.locations import JobLocations
from service.jobs.manager import JobLimits, JobManager
from service.store import JobStore

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 300.0

SMALL_JOB: dict[str, Any] = {
    "env": "CartPole-v1", "total_steps": 20_000, "workers": 2, "envs_per_worker": 4,
    "a2c": {"steps_per_batch": 512}, "eval_every": 0, "eval_episodes": 2, "checkpoint_every": 10,
}
"""40 updates of 512 steps; checkpoints every 10 updates and at the end."""
LONG_JOB: dict[str, Any] = {**SMALL_JOB, "total_steps": 4_000_000, "checkpoint_every": 5}
"""Runs for minutes unless stopped (tests stop it)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JobsClient(httpx.Client):
    """An httpx client with the waits the job tests need."""

    def wait_for(self, job_id: str, done: Callable[[dict], bool], timeout: float = JOB_TIMEOUT_S) -> dict:
        """Poll GET /jobs/{id} until `done(job)`; fail with the job's last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/jobs/{job_id}").raise_for_status().json()
            if done(job):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} did not get there in {timeout}s: {json.dumps(job)[:2000]}")
            time.sleep(0.2)

    def wait_status(self, job_id: str, *statuses: str, timeout: float = JOB_TIMEOUT_S) -> dict:
        """Poll until the job is in one of `statuses`."""
        return self.wait_for(job_id, lambda j: j["status"] in statuses, timeout)

    def wait_finished(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict:
        """Poll until the job is in a terminal state."""
        return self.wait_status(job_id, "SUCCEEDED", "FAILED", "STOPPED", timeout=timeout)

    def all_metrics(self, job_id: str) -> list[dict]:
        """Every metrics row of the job."""
        return self.get(f"/jobs/{job_id}/metrics", params={"limit": 10_000}).raise_for_status().json()["rows"]


def _stat(pid: int, tid: int | None = None) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def processes() -> Iterator[tuple[int, list[str], list[str]]]:
    """(pid, its stat fields after the name, its command line's arguments) of every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if fields is not None and fields[0] != "Z":
            yield int(entry.name), fields, argv


def children(pid: int, cmdline_part: str) -> list[int]:
    """The pids of `pid`'s live child processes whose command line contains `cmdline_part`."""
    return [child for child, fields, argv in processes()
            if int(fields[1]) == pid and cmdline_part in " ".join(argv)]


def actor_pids(session_id: int, class_name: str) -> list[int]:
    """PIDs of Ray actor processes of `class_name` in a session (the server's, by setsid).

    A job that took the server's spare driver runs warm actors (service/run/warm.py), whose
    processes are titled `ray::Warm<class_name>`: they count as `class_name` too."""
    titles = (f"ray::{class_name}", f"ray::Warm{class_name}")
    return [pid for pid, fields, argv in processes()
            if int(fields[3]) == session_id  # field 6 of /proc/<pid>/stat
            and any(argv[0].strip() == t or argv[0].strip().startswith(f"{t}.") for t in titles)]


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if (_stat(p) or ["Z"])[0] != "Z"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def nice_of(pid: int, tid: int | None = None) -> int:
    """The nice value of a process, or of one of its threads."""
    return int(_stat(pid, tid)[16])


def read_sse(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event, data) of each server-sent event, until the server closes the stream."""
    events, kind, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            events.append((kind or "message", json.loads("\n".join(data))))
            kind, data = None, []
    return events


class ServerProcess:
    """`python -m api.cli serve` in a subprocess, on a free loopback port."""

    def __init__(self, data_dir: Path, token: str | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.token = data_dir, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A short private Ray temp dir: the embedded Ray cannot join another test's `ray start`
        # cluster, and its socket paths stay under the 107-byte limit.
        self.ray_tmp = tempfile.mkdtemp(prefix="a2c-api-", dir="/tmp")
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("A2C_") and k != "RAY_ADDRESS"}
        self.env = {**base, "RAY_TMPDIR": self.ray_tmp, "A2C_RAY_NUM_CPUS": "4", "A2C_SSE_POLL_S": "0.2",
                    "A2C_MAX_TOTAL_STEPS": "5000000", "PYTHONUNBUFFERED": "1", **(env or {})}
        if token:
            self.env["A2C_API_TOKEN"] = token
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        """Start and wait until /healthz answers (the lifespan has joined Ray and recovered jobs)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's output, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, token: str | None = None) -> JobsClient:
        """A client of this server, with `token` (default: the server's; "" for none) as bearer."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return JobsClient(base_url=self.url, headers=headers, timeout=60)

    def driver_pids(self) -> list[int]:
        """The pids of this server's job driver processes (forks of its `multiprocessing` fork server)."""
        servers = children(self.proc.pid, "multiprocessing.forkserver") if self.proc else []
        return [pid for server in servers for pid in children(server, "multiprocessing.forkserver")]

    def session_pids(self) -> list[int]:
        """Every live process of the server's session (it runs in one of its own: setsid), the
        server aside: its embedded Ray's daemons and actors, its job drivers, its Ray reaper."""
        if self.proc is None:
            return []
        return [pid for pid, fields, _ in processes() if int(fields[3]) == self.proc.pid and pid != self.proc.pid]

    def described(self, pids: list[int]) -> list[str]:
        """`pid command` of those of `pids` still alive, for failure messages."""
        return [f"{pid} {' '.join(argv)[:80]}" for pid, _, argv in processes() if pid in pids]

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; its embedded Ray goes down with it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM (graceful: jobs checkpoint), then SIGKILL if it hangs; clean up Ray's dir.

        `left_after_stop` lists the processes of its session still alive 30 s after it exited
        (nothing should be: stopping the server stops its embedded Ray completely); they are
        then killed, so no test leaks them into the next."""
        session = self.session_pids()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.kill()
        self.left_after_stop = self.described(wait_gone(session, 30))
        if self.proc is not None:
            try:  # Ray processes this server started, in its session, if any outlived it
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def start_server(tmp_path_factory, data_dir: Path | None = None, token: str | None = None,
                 **env: str) -> ServerProcess:
    """Start a server on `data_dir` (default: a fresh one), with `token` and extra env; the
    caller stops it. Stop servers as soon as they are done: an idle server's embedded Ray
    takes CPU from every test after it."""
    server = ServerProcess(data_dir or tmp_path_factory.mktemp("server") / "data", token, env)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture
def spawn_server(tmp_path_factory) -> Iterator[Callable[..., ServerProcess]]:
    """`start_server` for one test: the servers it starts are stopped when it ends."""
    started: list[ServerProcess] = []

    def spawn(data_dir: Path | None = None, token: str | None = None, **env: str) -> ServerProcess:
        server = start_server(tmp_path_factory, data_dir, token, **env)
        started.append(server)
        return server

    yield spawn
    for server in started:
        server.stop()


def offline_tracking(where: Path) -> dict[str, str]:
    """The environment that keeps a server's experiment trackers off the network: W&B offline
    and MLflow on a file store, both under `where`."""
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(where / "wandb"), "WANDB_DATA_DIR": str(where / "wandb-data"),
            "WANDB_CACHE_DIR": str(where / "wandb-cache"), "WANDB_CONFIG_DIR": str(where / "wandb-config"),
            "WANDB_PROJECT": "a2c-tests", "MLFLOW_TRACKING_URI": (where / "mlruns").as_uri(),
            "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_EXPERIMENT_NAME": "a2c-tests"}


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The shared server (no token) for the lifecycle, stop, resume and error tests; its trackers
    (`tracking`) log offline, under `server.tracking_dir`."""
    tracking_dir = tmp_path_factory.mktemp("tracking")
    server = start_server(tmp_path_factory, **offline_tracking(tracking_dir))
    server.tracking_dir = tracking_dir
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(server) -> Iterator[JobsClient]:
    """A client of the shared server."""
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def sse_reader() -> Callable[[httpx.Response], list[tuple[str, dict]]]:
    """`read_sse`, for tests that open their own streams."""
    return read_sse


@pytest.fixture(scope="session")
def finished_job(client) -> dict:
    """A SMALL_JOB run to the end while its metrics stream was read: {"id", "post", "sse", "job"}."""
    post = client.post("/jobs", json=SMALL_JOB)
    assert post.status_code == 201, post.text
    job_id = post.json()["id"]
    with client.stream("GET", f"/jobs/{job_id}/metrics/stream", timeout=JOB_TIMEOUT_S) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        sse = read_sse(response)
    job = client.wait_finished(job_id)
    return {"id": job_id, "post": post, "sse": sse, "job": job}


@pytest.fixture(scope="session")
def stopped_job(client) -> dict:
    """A LONG_JOB stopped once it had trained a little: {"id", "stop", "job"}."""
    job_id = client.post("/jobs", json=LONG_JOB).raise_for_status().json()["id"]
    client.wait_for(job_id, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] >= 5 * 512)
    stop = client.post(f"/jobs/{job_id}/stop")
    job = client.wait_finished(job_id)
    return {"id": job_id, "stop": stop, "job": job}


@pytest.fixture
def small_job() -> dict[str, Any]:
    """A copy of SMALL_JOB to modify."""
    return json.loads(json.dumps(SMALL_JOB))


@pytest.fixture
def long_job() -> dict[str, Any]:
    """A copy of LONG_JOB to modify."""
    return json.loads(json.dumps(LONG_JOB))


# In-process app tests (no server, no Ray): a store and a manager that only validates and queues.

@pytest.fixture
def data_dir(tmp_path) -> Path:
    """The data dir of an in-process app test."""
    return tmp_path / "data"


@pytest.fixture
def store(data_dir) -> Iterator[JobStore]:
    """A job store in `data_dir`, closed after the test."""
    s = JobStore(data_dir / "jobs.sqlite3")
    yield s
    s.close()


@pytest.fixture
def manager(store, data_dir) -> JobManager:
    """A job manager that is never started (no Ray; the cluster reports 4 CPUs): jobs stay PENDING."""
    return JobManager(store, JobLocations(data_dir), JobLimits(max_total_steps=100_000), cluster_cpus=lambda: 4.0)
