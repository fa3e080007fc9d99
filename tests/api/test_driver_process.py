"""Each job's driver runs in its own process: it keeps the normal CPU priority while request
handling yields, and a driver that dies fails only its job (with the reason).

Ctrl-C to the server's group is in test_restart.py; a killed server taking its drivers with it,
in test_crash.py."""

from __future__ import annotations

import os
import signal

from tests.api.conftest import actor_pids, children, nice_of


def test_a_killed_driver_fails_only_its_job_and_drivers_keep_the_training_priority(spawn_server, long_job):
    server = spawn_server()
    with server.client() as client:
        job_id = client.post("/jobs", json=long_job).raise_for_status().json()["id"]
        client.wait_for(job_id, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] > 0)
        drivers = server.driver_pids()
        assert len(drivers) == 1, drivers
        # Request handling (the event loop thread, the server's main thread) yields the CPU to
        # training; the driver, and the Ray processes that run the actors, do not.
        assert nice_of(server.proc.pid) == 10
        assert nice_of(drivers[0]) == 0
        raylets = children(server.proc.pid, "raylet")
        assert raylets and all(nice_of(p) == 0 for p in raylets)
        # Ray would start actor processes at nice 15, below the request handling.
        session = server.proc.pid  # started with start_new_session
        actors = actor_pids(session, "Learner") + actor_pids(session, "RolloutWorker")
        assert len(actors) == 1 + long_job.get("workers", 1), actors
        assert all(nice_of(p) == 0 for p in actors), [nice_of(p) for p in actors]

        # A stray SIGINT or SIGTERM does not end the driver: the server stops its jobs itself.
        os.kill(drivers[0], signal.SIGINT)
        os.kill(drivers[0], signal.SIGTERM)
        step = client.get(f"/jobs/{job_id}").json()["progress"]["step"]
        job = client.wait_for(job_id, lambda j: j["progress"]["step"] > step + 4 * 512 or j["status"] != "RUNNING")
        assert job["status"] == "RUNNING" and server.driver_pids() == drivers, job

        os.kill(drivers[0], signal.SIGKILL)
        job = client.wait_finished(job_id, timeout=60)
        assert job["status"] == "FAILED", job
        assert job["error"]["type"] == "DriverDied"
        assert "exited with code -9" in job["error"]["message"]
        assert client.get("/readyz").json()["status"] == "ok"
        # The server still runs jobs.
        again = client.post("/jobs", json={**long_job, "total_steps": 4096}).raise_for_status().json()["id"]
        assert client.wait_finished(again)["status"] == "SUCCEEDED"
