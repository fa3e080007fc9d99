"""The server's limits, set through A2C_* environment variables on a real server: max total
steps and max workers per job are 422s naming the field and the setting; max concurrent jobs
queues the rest in PENDING (never two RUNNING at once)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from tests.api.conftest import start_server

JOB = {"env": "CartPole-v1", "total_steps": 2048, "workers": 1, "envs_per_worker": 2,
       "a2c": {"steps_per_batch": 256}, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 4}
"""8 updates on 2 CPUs: two such jobs would fit the server's 4 CPUs at once."""


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server that allows 4096 steps, 1 worker per job and 1 job running at a time."""
    server = start_server(tmp_path_factory, tmp_path_factory.mktemp("limits") / "data", A2C_MAX_TOTAL_STEPS="4096",
                          A2C_MAX_WORKERS_PER_JOB="1", A2C_MAX_CONCURRENT_JOBS="1")
    yield server
    server.stop()


def test_total_steps_over_a2c_max_total_steps_is_422(limited):
    with limited.client() as client:
        r = client.post("/jobs", json={**JOB, "total_steps": 4097})
        assert r.status_code == 422
        error = r.json()["detail"][0]
        assert error["loc"] == ["body", "total_steps"] and "4096 (A2C_MAX_TOTAL_STEPS)" in error["msg"]
        assert client.post("/jobs", json={**JOB, "total_steps": 4096}).status_code == 201


def test_workers_over_a2c_max_workers_per_job_is_422(limited):
    with limited.client() as client:
        r = client.post("/jobs", json={**JOB, "workers": 2, "a2c": {"steps_per_batch": 512}})
        assert r.status_code == 422
        error = r.json()["detail"][0]
        assert error["loc"] == ["body", "workers"] and "A2C_MAX_WORKERS_PER_JOB" in error["msg"]


def test_jobs_over_a2c_max_concurrent_jobs_wait_in_pending(limited):
    with limited.client() as client:
        with ThreadPoolExecutor(3) as pool:
            ids = list(pool.map(lambda seed: client.post("/jobs", json={**JOB, "seed": seed})
                                .raise_for_status().json()["id"], range(3)))
        deadline = time.monotonic() + 300
        while True:
            jobs = [client.get(f"/jobs/{i}").json() for i in ids]
            running = sum(j["status"] == "RUNNING" for j in jobs)
            assert running <= 1, [j["status"] for j in jobs]
            if all(j["status"] in ("SUCCEEDED", "FAILED", "STOPPED") for j in jobs):
                break
            assert time.monotonic() < deadline, [j["status"] for j in jobs]
            time.sleep(0.2)
        assert [j["status"] for j in jobs] == ["SUCCEEDED"] * 3
        spans = sorted((datetime.fromisoformat(j["started"]), datetime.fromisoformat(j["ended"])) for j in jobs)
        for (_, ended), (started, _) in zip(spans, spans[1:]):
            assert started >= ended, "a job started before the one before it ended"
