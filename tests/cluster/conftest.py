"""A real multi-node Ray cluster on this machine: a head raylet and worker raylets, each its own
`ray start --block` process group with a temp dir of its own (as machines have disks of their
own), sharing one auth token made for the cluster.

The cluster is the README's recipe: `ray start --head` plus `ray start --address=...` raylets,
one declaring `--num-gpus 1`. Every port is picked free (so the suite's embedded Ray and other
people's clusters on the machine are left alone), the Ray client port lies outside the worker
port range 10002-19999, and token auth is on with a token file made for this cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = shutil.which("ray")
START_TIMEOUT_S = 180.0
"""Longest wait for a raylet to come up; the machine is shared and has 2 cores."""
START_ATTEMPTS = 3
"""`ray start` gives a raylet a fixed 30 s to register with the GCS; under load it may not."""
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on this machine right now (all in the ephemeral range)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Raylet:
    """One `ray start --block` process (and its process group: raylet, agents, workers)."""

    name: str
    proc: subprocess.Popen
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group, as losing the machine would."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        """Whether the `ray start` process is still running."""
        return self.proc.poll() is None


@dataclass
class LocalRayCluster:
    """Raylets on loopback with token auth; talks to the head over its dashboard HTTP API."""

    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    raylets: dict[str, Raylet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.temp_dir = self.root / "ray"
        self.token_file = self.root / "auth_token"
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_", "RAY_API_SERVER"))}
        # Every process of this cluster and every client of it uses this cluster's own token.
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file),
                    "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def gcs_address(self) -> str:
        """host:port of the GCS, what `ray start --address` and `ray.init(address=)` take."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard / Jobs API, bound to 127.0.0.1 only."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_temp_dir(self, name: str) -> Path:
        """The raylet's --temp-dir: the head's is `temp_dir`. Raylets that shared one unpacked a
        job's --working-dir over the same path, each deleting it first, so that a worker whose
        current directory was deleted under it died importing torch (oneMKL: "Cannot load
        libtorch_cpu.so") in a CI run."""
        return self.temp_dir if name == "head" else self.root / f"ray-{name}"

    def _start(self, name: str, args: list[str]) -> Raylet:
        node_manager, object_manager, agent_listen, agent_grpc, metrics, runtime_env = free_ports(6)
        cmd = [RAY_CLI, "start", *args, "--node-ip-address", "127.0.0.1", "--node-name", name,
               "--temp-dir", str(self.node_temp_dir(name)), "--object-store-memory", str(150 * 2**20),
               "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
               "--dashboard-agent-listen-port", str(agent_listen),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
               "--runtime-env-agent-port", str(runtime_env), "--disable-usage-stats", "--block"]
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            # A session of its own (setsid), so that teardown and the node-loss test can signal
            # the raylet with everything it started, and nothing else.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.root, start_new_session=True)
        raylet = self.raylets[name] = Raylet(name, proc, log)
        return raylet

    def _started(self, raylet: Raylet) -> bool:
        """Wait for `ray start` to report success (True) or to give up (False)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in raylet.log.read_text(errors="replace"):
            if not raylet.alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def _start_retrying(self, name: str, args) -> None:
        """Start a raylet (`args()` gives fresh flags each time), retrying when it times out."""
        for attempt in range(1, START_ATTEMPTS + 1):
            raylet = self._start(name, args())
            if self._started(raylet):
                return
            failed = raylet.log.read_text(errors="replace")
            raylet.kill()
            raylet.proc.wait(timeout=60)
            (self.root / f"{name}.failed-{attempt}.log").write_text(failed)
        raise RuntimeError(f"raylet {name} did not start in {START_ATTEMPTS} attempts:\n{failed[-3000:]}")

    def start_head(self, num_cpus: int) -> None:
        """`ray start --head` with no GPU; the dashboard stays on 127.0.0.1."""
        def args():
            self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
            return ["--head", "--port", str(self.gcs_port), "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(self.client_port),
                    "--num-cpus", str(num_cpus), "--num-gpus", "0"]
        self._start_retrying("head", args)

    def add_workers(self, specs: dict[str, tuple[int, int]]) -> None:
        """Start worker raylets {name: (num_cpus, num_gpus)}, one after the other, and wait for all."""
        for name, (cpus, gpus) in specs.items():
            self._start_retrying(name, lambda: ["--address", self.gcs_address, "--num-cpus", str(cpus),
                                                "--num-gpus", str(gpus)])
        self.wait_for(lambda: len([n for n in self.nodes() if n["state"] == "ALIVE"]) == len(self.raylets),
                      f"{len(self.raylets)} ALIVE nodes", START_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after a short grace period (nothing
        of the cluster is kept; `ray start --block` alone takes 20 s and more to exit)."""
        for raylet in self.raylets.values():
            raylet.kill(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for raylet in self.raylets.values():
            try:
                raylet.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            raylet.kill(signal.SIGKILL)  # the group may outlive `ray start` itself
            raylet.proc.wait(timeout=30)

    def headers(self, token: str | None = "") -> dict[str, str]:
        """The bearer header for this cluster's token (or another token, or None: no header)."""
        token = self.token if token == "" else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def http(self, path: str, token: str | None = "") -> tuple[int, Any]:
        """GET a dashboard path; (status, parsed JSON or text)."""
        request = urllib.request.Request(self.dashboard_url + path, headers=self.headers(token))
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                body, status = resp.read().decode(), resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read().decode(errors="replace"), exc.code
        try:
            return status, json.loads(body)
        except json.JSONDecodeError:
            return status, body

    def _state(self, resource: str) -> list[dict[str, Any]]:
        status, body = self.http(f"/api/v0/{resource}?detail=1&limit=10000")
        if status != 200:
            raise RuntimeError(f"state API {resource}: {status} {body}")
        return body["data"]["result"]["result"]

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's node table (node_id, node_name, state, resources_total, ...)."""
        return self._state("nodes")

    def node_names(self) -> dict[str, str]:
        """node_id -> the raylet name given at `ray start --node-name`."""
        return {n["node_id"]: n["node_name"] for n in self.nodes()}

    def actors(self, ray_job_id: str) -> list[dict[str, Any]]:
        """The actors of one Ray job (dead ones too), with class_name, state and node_id."""
        return [a for a in self._state("actors") if a["job_id"] == ray_job_id]

    def job(self, submission_id: str) -> dict[str, Any]:
        """Ray Jobs API info: status, message, job_id, driver_exit_code..."""
        status, body = self.http(f"/api/jobs/{submission_id}")
        if status != 200:
            raise RuntimeError(f"job {submission_id}: {status} {body}")
        return body

    def ray(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `ray` CLI against this cluster as a user would, with the token in its env."""
        result = subprocess.run([RAY_CLI, *args], env=self.env, cwd=REPO, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def submit(self, submission_id: str, entrypoint: list[str], working_dir: Path | None = REPO,
               runtime_env: dict[str, Any] | None = None) -> None:
        """`ray job submit --no-wait [--working-dir DIR] [--runtime-env-json ...] -- ENTRYPOINT`
        through the Jobs API."""
        wd = ["--working-dir", str(working_dir)] if working_dir else []
        env = ["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []
        self.ray("job", "submit", "--address", self.dashboard_url, "--submission-id", submission_id,
                 "--no-wait", *wd, *env, "--", *entrypoint)

    def wait_job(self, submission_id: str, timeout: float = 300) -> dict[str, Any]:
        """Poll until the job reaches a terminal state; returns its info."""
        return self.wait_for(lambda: (info := self.job(submission_id))["status"] in TERMINAL and info,
                             f"job {submission_id} to finish", timeout)

    def logs(self, submission_id: str) -> str:
        """The driver's whole stdout/stderr, from the Jobs API that `ray job logs` calls (without
        a CLI process per poll: each costs a second of imports on a loaded 2-core machine)."""
        status, body = self.http(f"/api/jobs/{submission_id}/logs")
        if status != 200:
            raise RuntimeError(f"GET /api/jobs/{submission_id}/logs: {status} {body}")
        return body["logs"]

    @staticmethod
    def wait_for(predicate, what: str, timeout: float, every: float = 1.0):
        """Poll `predicate` until it returns something truthy; returns that."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(every)


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (2 CPUs, no GPU), `gpu` (1 CPU, 1 GPU declared) and `cpu` (2 CPUs) raylets."""
    if RAY_CLI is None:
        pytest.skip("the `ray` CLI is not installed")
    # Short root: Ray's AF_UNIX socket paths live under it and must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="a2c-rc-", dir="/tmp"))
    cluster = LocalRayCluster(root)
    t0 = time.monotonic()
    try:
        cluster.start_head(num_cpus=2)
        cluster.add_workers({"gpu": (1, 1), "cpu": (2, 0)})
        cluster.startup_s = time.monotonic() - t0
        yield cluster
    finally:
        t1 = time.monotonic()
        cluster.stop()
        print(f"\nlocal Ray cluster: up in {getattr(cluster, 'startup_s', float('nan')):.1f}s, "
              f"stopped in {time.monotonic() - t1:.1f}s")
        shutil.rmtree(root, ignore_errors=True)
