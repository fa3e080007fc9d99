"""A server with a token, killed mid-job and restarted on the same data dir.

Token auth is checked on this server; then a crash (SIGKILL: the embedded Ray dies with it)
must keep finished jobs, metrics and checkpoints, and must not leave the running job RUNNING:
it resumes from its last checkpoint. A graceful shutdown (SIGTERM to the server, or Ctrl-C to
its whole process group) checkpoints and requeues.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.api.conftest import start_server

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def first_server(tmp_path_factory):
    """A server with A2C_API_TOKEN set, on a fresh data dir."""
    server = start_server(tmp_path_factory, tmp_path_factory.mktemp("restart") / "data", token=TOKEN)
    yield server
    server.stop()


def test_every_route_but_healthz_needs_the_token(first_server):
    with first_server.client(token="") as anonymous, first_server.client(token="wrong") as wrong:
        assert anonymous.get("/healthz").status_code == 200
        for path in ("/jobs", "/readyz", "/jobs/0123456789ab", "/jobs/0123456789ab/metrics",
                     "/jobs/0123456789ab/metrics/stream", "/jobs/0123456789ab/checkpoints",
                     "/jobs/0123456789ab/checkpoints/latest/archive", "/openapi.json", "/docs"):
            for client in (anonymous, wrong):
                r = client.get(path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"] == "Bearer"
        assert anonymous.post("/jobs", json={"env": "CartPole-v1"}).status_code == 401
        assert wrong.post("/jobs/0123456789ab/stop").status_code == 401
        basic = anonymous.get("/jobs", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
    with first_server.client() as authed:
        assert authed.get("/jobs").status_code == 200
        assert authed.get("/readyz").json()["checks"]["ray"].startswith("ok")
        assert "/jobs" in authed.get("/openapi.json").json()["paths"]


def test_sigkill_mid_job_then_restart_keeps_history_and_resumes_the_running_job(
        first_server, spawn_server, small_job, long_job):
    with first_server.client() as client:
        done_id = client.post("/jobs", json=small_job).raise_for_status().json()["id"]
        assert client.wait_finished(done_id)["status"] == "SUCCEEDED"
        done_rows = client.all_metrics(done_id)
        done_ckpts = client.get(f"/jobs/{done_id}/checkpoints").json()["checkpoints"]
        running_id = client.post("/jobs", json=long_job).raise_for_status().json()["id"]
        client.wait_for(running_id, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] >= 12 * 512)
        ckpt_step = client.get(f"/jobs/{running_id}/checkpoints").json()["checkpoints"][-1]["step"]

    first_server.kill()
    second = spawn_server(first_server.data_dir, token=TOKEN)

    with second.client() as client:
        done = client.get(f"/jobs/{done_id}").json()
        assert done["status"] == "SUCCEEDED"
        assert client.all_metrics(done_id) == done_rows
        assert client.get(f"/jobs/{done_id}/checkpoints").json()["checkpoints"] == done_ckpts
        assert client.get(f"/jobs/{done_id}/checkpoints/latest/archive").status_code == 200

        job = client.get(f"/jobs/{running_id}").json()
        restarted = [e for e in job["events"] if e["kind"] == "requeued"]
        assert restarted and "restarted while the job was RUNNING" in restarted[-1]["message"]
        resumed_from = int(restarted[-1]["message"].split("(step ")[1].rstrip(")"))
        assert resumed_from >= ckpt_step
        # It trains on from the checkpoint: RUNNING again and past it, not stuck RUNNING from before.
        job = client.wait_for(running_id, lambda j: j["status"] == "RUNNING"
                              and j["progress"]["step"] >= resumed_from + 4 * 512)
        steps = [r["step"] for r in client.all_metrics(running_id)]
        assert steps == sorted(set(steps)) and steps[0] == 512
        assert client.post(f"/jobs/{running_id}/stop").status_code == 202
        assert client.wait_finished(running_id)["status"] == "STOPPED"


def _shut_down(server, how: str) -> None:
    """Stop `server` gracefully: SIGTERM to it, or what Ctrl-C in its terminal sends."""
    if how == "ctrl-c":
        # SIGINT to the whole process group, the job's driver included, which must leave the
        # stopping to the server.
        os.killpg(server.proc.pid, signal.SIGINT)
        server.proc.wait(90)
    server.stop()  # SIGTERM; uvicorn shuts down, then re-raises the signal (exit code -15)
    assert "Application shutdown complete" in server.log_tail(), server.log_tail()
    assert server.left_after_stop == [], "the embedded Ray did not stop with the server"


def test_graceful_shutdown_checkpoints_and_the_next_start_resumes(spawn_server, tmp_path_factory, long_job):
    """SIGTERM, then Ctrl-C: each shutdown requeues the running job with a checkpoint, and the
    next server on the data dir trains it on from there (one chain: a server start is ~10 s)."""
    server = spawn_server(tmp_path_factory.mktemp("graceful") / "data")
    with server.client() as client:
        job_id = client.post("/jobs", json=long_job).raise_for_status().json()["id"]
        client.wait_for(job_id, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] >= 4 * 512)
    for how in ("sigterm", "ctrl-c"):
        _shut_down(server, how)
        server = spawn_server(server.data_dir)
        with server.client() as client:
            job = client.get(f"/jobs/{job_id}").json()
            requeued = [e["message"] for e in job["events"] if e["kind"] == "requeued"]
            assert sum("server shut down" in m for m in requeued) == 1 + (how == "ctrl-c"), (how, job["events"])
            last = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"][-1]["step"]
            client.wait_for(job_id, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] > last)
    with server.client() as client:
        assert client.post(f"/jobs/{job_id}/stop").status_code == 202
        assert client.wait_finished(job_id)["status"] == "STOPPED"
