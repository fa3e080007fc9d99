"""The trainer on a real multi-node Ray cluster on loopback, submitted with `ray job submit`.

One cluster for the module (see conftest.py): head (2 CPUs), `gpu` (1 CPU, 1 GPU declared; torch
here may have no CUDA) and `cpu` (2 CPUs). The node-loss test comes last: it kills a raylet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.run.checkpoints import read_checkpoint

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
TERMINAL_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}
SUMMARY_KEYS = {"job_id", "env", "steps", "wall_s", "startup_s", "env_steps_per_s",
                "final_return_mean", "best_return_mean", "checkpoint"}


def train_entrypoint_at(where: tuple[str, str], total_steps: int, *extra: str) -> list[str]:
    """`python -m service.train ...` for a small CartPole job; `where` is ("--out", DIR) or
    ("--storage", PATH_OR_URI)."""
    return ["python", "-m", "service.train", "--env", "CartPole-v1", "--total-steps", str(total_steps),
            "--workers", "2", "--envs-per-worker", "4", "--steps-per-batch", "512", *where, *extra]


def train_entrypoint(out: Path, total_steps: int, *extra: str) -> list[str]:
    """The same, writing to the run directory `out`."""
    return train_entrypoint_at(("--out", str(out)), total_steps, *extra)


def summary_of(logs: str) -> dict:
    """The job's last non-empty log line, which must be the JSON summary."""
    last = [line for line in logs.splitlines() if line.strip()][-1]
    return json.loads(last)


def events_of(out: Path) -> list[dict]:
    """The job's events.jsonl, as the CLI's sink wrote it."""
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def placement(cluster, ray_job_id: str, actors: list[dict] | None = None) -> dict[str, list[str]]:
    """class name -> names of the raylets its actors ran on (dead actors included), from
    `actors` when given (one snapshot of the state API), else from a fresh listing."""
    names = cluster.node_names()
    where: dict[str, list[str]] = {}
    for actor in cluster.actors(ray_job_id) if actors is None else actors:
        where.setdefault(actor["class_name"], []).append(names.get(actor["node_id"], actor["node_id"]))
    return where


def test_jobs_api_refuses_requests_without_the_cluster_token(ray_cluster):
    assert ray_cluster.http("/api/jobs/", token=None)[0] == 401
    assert ray_cluster.http("/api/jobs/", token="not-the-token")[0] == 403
    assert ray_cluster.http("/api/jobs/")[0] == 200


def test_connect_finds_the_token_without_ray_auth_mode(ray_cluster):
    """`connect(address)` turns token mode on itself: Ray does so only for address="auto"."""
    env = {k: v for k, v in ray_cluster.env.items() if k != "RAY_AUTH_MODE"}
    code = ("from service.cluster import connect, cluster_has_gpu; "
            f"print(connect({ray_cluster.gcs_address!r})); print('gpu', cluster_has_gpu())")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"cluster at {ray_cluster.gcs_address} (3 nodes, 5 CPUs, 1 GPU)" in result.stdout
    assert "gpu True" in result.stdout


def _connect_in_subprocess(env: dict, address: str | None) -> str:
    code = f"from service.cluster import connect; print(connect({address!r}, num_cpus=1))"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_no_address_means_embedded_ray_even_beside_a_ray_start_cluster(ray_cluster):
    """`ray start` recorded this cluster as the machine's latest; plain ray.init() would join it."""
    env = {**ray_cluster.env, "RAY_TMPDIR": str(ray_cluster.root)}  # where ray_current_cluster is
    assert (ray_cluster.temp_dir / "ray_current_cluster").exists()
    assert "embedded local Ray (1 node, 1 CPU, 0 GPUs)" in _connect_in_subprocess(env, None)
    assert "(3 nodes, 5 CPUs, 1 GPU)" in _connect_in_subprocess(env, "auto")


def test_ray_job_submit_trains_with_learner_on_gpu_node_and_workers_elsewhere(ray_cluster, tmp_path):
    store = (tmp_path / "storage").as_uri()  # the configured storage, as a URI
    t0 = time.monotonic()
    ray_cluster.submit("a2c-cluster-train", train_entrypoint_at(("--storage", store), 8192))
    info = ray_cluster.wait_job("a2c-cluster-train", timeout=480)
    logs = ray_cluster.logs("a2c-cluster-train")
    print(f"job {info['status']} in {time.monotonic() - t0:.1f}s")
    assert info["status"] == "SUCCEEDED", f"{info['message']}\n{logs[-4000:]}"

    summary = summary_of(logs)
    assert SUMMARY_KEYS <= summary.keys() and summary["steps"] == 8192
    # The driver wrote the archive into the configured storage, wherever the learner ran.
    assert summary["checkpoint"] == f"{store}/{summary['job_id']}/checkpoints/step-0000008192.tar.gz"
    assert read_checkpoint(summary["checkpoint"]).state.step == 8192
    out = tmp_path / "storage" / summary["job_id"]

    import torch
    device = next(e["message"] for e in events_of(out) if e["kind"] == "device")
    if torch.cuda.is_available():
        assert device.startswith("cuda:0"), device
    else:  # Ray gave the learner the declared GPU; torch cannot use it here, and says so.
        assert device.startswith("cpu: fell back from GPU") and "CUDA_VISIBLE_DEVICES=0" in device, device
        assert f"[device] {device}" in logs

    where = placement(ray_cluster, info["job_id"])
    assert where["Learner"] == ["gpu"], where
    assert len(where["RolloutWorker"]) == 2 and "gpu" not in where["RolloutWorker"], where
    gpu_node = next(node for node, name in ray_cluster.node_names().items() if name == "gpu")
    placed = next(e["message"] for e in events_of(out) if e["kind"] == "placement")
    assert placed.startswith(f"learner on node {gpu_node[:12]};"), placed


def test_ray_job_submit_with_no_out_writes_the_run_to_a2c_runs_in_home(ray_cluster, tmp_path):
    """deploy/README.md's command with neither --out nor --storage. Its working directory is
    Ray's unpacked copy of --working-dir, which Ray unpacks again over the same path for each
    node of the job (these raylets share one disk): a run written there lost its directory
    before its first metrics row (FileNotFoundError on the TensorBoard file)."""
    home = tmp_path / "home"
    home.mkdir()
    command = train_entrypoint_at(("--seed", "0"), 8192)
    ray_cluster.submit("a2c-cluster-default-out", command, runtime_env={"env_vars": {"HOME": str(home)}})
    info = ray_cluster.wait_job("a2c-cluster-default-out", timeout=480)
    logs = ray_cluster.logs("a2c-cluster-default-out")
    assert info["status"] == "SUCCEEDED", f"{info['message']}\n{logs[-4000:]}"
    summary = summary_of(logs)
    run = home / "a2c-runs" / summary["job_id"]
    assert summary["checkpoint"] == str(run / "checkpoints" / "step-0000008192.tar.gz")
    assert read_checkpoint(summary["checkpoint"]).state.step == 8192
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [512 * (i + 1) for i in range(16)]
    tensorboard = home / "a2c-runs" / "tensorboard" / f"CartPole-v1-{summary['job_id']}"
    assert list(tensorboard.glob("events.out.tfevents.*")), "the TensorBoard file is there"
    where = placement(ray_cluster, info["job_id"])
    assert len(set(where["Learner"] + where["RolloutWorker"])) >= 2, where  # the case that lost the files


def test_api_server_on_the_cluster_reports_the_device_and_serves_checkpoints_from_storage(ray_cluster, tmp_path):
    """`a2c serve --address ...` joined to the cluster, with A2C_STORAGE outside its data dir."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = tmp_path / "shared-storage"
    env = {**ray_cluster.env, "A2C_STORAGE": store.as_uri(), "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port),
                               "--data-dir", str(tmp_path / "data"), "--address", ray_cluster.gcs_address],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ray_cluster.wait_for(lambda: _answers(f"{url}/healthz"), "the API server", 180)
        job = {"env": "CartPole-v1", "total_steps": 4096, "workers": 2, "envs_per_worker": 4,
               "a2c": {"steps_per_batch": 512}, "eval_every": 0, "checkpoint_every": 4}
        with httpx.Client(base_url=url, timeout=60) as client:
            job_id = client.post("/jobs", json=job).raise_for_status().json()["id"]
            done = ray_cluster.wait_for(
                lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in TERMINAL_STATES and j,
                "the API's job to finish", 480)
            assert done["status"] == "SUCCEEDED", (done, (tmp_path / "serve.log").read_text()[-3000:])
            events = {e["kind"]: e["message"] for e in done["events"]}
            archive = client.get(f"/jobs/{job_id}/checkpoints/latest/archive")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    import torch
    if not torch.cuda.is_available():  # the learner went to the GPU node and says why it uses CPU
        assert events["device"].startswith("cpu: fell back from GPU"), events
    gpu_node = next(node for node, name in ray_cluster.node_names().items() if name == "gpu")
    assert events["placement"].startswith(f"learner on node {gpu_node[:12]};"), events
    assert sorted(p.name for p in (store / job_id / "checkpoints").iterdir()) == [
        "step-0000002048.tar.gz", "step-0000004096.tar.gz"]
    assert archive.status_code == 200
    assert archive.content == (store / job_id / "checkpoints" / "step-0000004096.tar.gz").read_bytes()
    assert not (tmp_path / "data" / "jobs").exists()  # only the job database is on the data dir


def _answers(url: str) -> bool:
    import httpx
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


BLOCKER = """
import time, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
@ray.remote(num_cpus=1)
class Hold:
    def ready(self):
        return True
here = ray.get_runtime_context().get_node_id()
hold = Hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
ray.get(hold.ready.remote())
print("holding one CPU on", here, flush=True)
time.sleep(3600)
"""


def test_job_finishes_when_the_raylet_of_a_worker_dies(ray_cluster, tmp_path):
    # Hold one head CPU during start-up so that at least one worker must go to the `cpu` raylet
    # (the scheduler keeps CPU-only actors off the GPU node while others have room).
    ray_cluster.submit("a2c-cluster-blocker", ["python", "-c", BLOCKER], working_dir=None)
    ray_cluster.wait_for(lambda: "holding" in ray_cluster.logs("a2c-cluster-blocker"),
                         "the blocker to hold a head CPU", 180, every=2)
    out = tmp_path / "run"
    # Enough steps to outlast the loss: a worker process whose raylet is killed can answer for a
    # few seconds more, and a run of 150k steps once ended on it before it died (no loss seen).
    total = 400_000
    ray_cluster.submit("a2c-cluster-node-loss", train_entrypoint(out, total, "--eval-every", "0"))
    ray_job = ray_cluster.wait_for(lambda: ray_cluster.job("a2c-cluster-node-loss").get("job_id"),
                                   "the training driver to start", 180)

    def workers_placed():
        # One snapshot for both: from two, the learner could be listed pending (no node yet)
        # in the first and alive in the second, as in a CI run that read {'Learner': [None]}.
        actors = ray_cluster.actors(ray_job)
        alive = [a for a in actors if a["state"] == "ALIVE"]
        return len(alive) == 3 and placement(ray_cluster, ray_job, actors)

    where = ray_cluster.wait_for(workers_placed, "the learner and 2 workers to be alive", 240)
    assert where["Learner"] == ["gpu"] and "cpu" in where["RolloutWorker"], where
    # Free the held CPU now, so the lost worker will have somewhere to go. Stopping a job takes
    # seconds: done after the updates below, it let a loaded run reach its last step first.
    ray_cluster.ray("job", "stop", "--address", ray_cluster.dashboard_url, "a2c-cluster-blocker")
    ray_cluster.wait_job("a2c-cluster-blocker", timeout=120)
    metrics = out / "metrics.jsonl"
    ray_cluster.wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3,
                         "3 updates", 240, every=0.5)
    # Then lose the `cpu` node, mid-run.
    step_at_kill = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert step_at_kill < total and ray_cluster.job("a2c-cluster-node-loss")["status"] == "RUNNING", \
        f"the job ended (step {step_at_kill}) before the node loss"
    killed_at = time.monotonic()
    ray_cluster.raylets["cpu"].kill()

    info = ray_cluster.wait_job("a2c-cluster-node-loss", timeout=600)
    logs = ray_cluster.logs("a2c-cluster-node-loss")
    print(f"node lost at step {step_at_kill}; job {info['status']} {time.monotonic() - killed_at:.1f}s later")
    assert info["status"] == "SUCCEEDED", f"{info['message'][:300]}\n...\n{logs[-3000:]}"
    assert summary_of(logs)["steps"] >= total
    workers = [a for a in ray_cluster.actors(ray_job) if a["class_name"] == "RolloutWorker"]
    names = ray_cluster.node_names()
    print("workers:", [(names.get(a["node_id"]), a["state"]) for a in workers])
    events = [e for e in events_of(out) if e["kind"] != "checkpoint"]
    print("events:", events[-6:])
    # The trainer replaced the worker lost with the `cpu` node by a new actor on a live node.
    lost = [e["message"] for e in events if e["kind"] == "worker_lost"]
    replaced = [e["message"] for e in events if e["kind"] == "worker_replaced"]
    assert lost and replaced, events
    assert any(f" {reason}: " in lost[0] for reason in ("died", "unreachable", "result lost", "hung")), lost
    cpu_node = next(node for node, name in names.items() if name == "cpu")
    assert all(f"on node {cpu_node[:12]}" not in m for m in replaced), (replaced, names)
    assert len(workers) >= 3, workers  # the 2 started, and the replacement(s)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [512 * k for k in range(1, len(rows) + 1)]
