"""SIGKILL of `a2c serve` right after it acknowledged jobs: nothing acknowledged is lost.

What test_restart.py does not cover: jobs acknowledged with 201 immediately before the kill
(they must be in the database, intact, and run after the restart), `PRAGMA integrity_check`
on the database the dead server left, the running job's driver process exiting with the
server, and a job RUNNING at the kill when no recovery is
allowed (A2C_MAX_RECOVERIES=0): it ends FAILED with a reason, never RUNNING forever. (The
resume of a RUNNING job is tested in test_restart.py.)
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

from tests.api.conftest import wait_gone

TINY_JOB = {"env": "CartPole-v1", "total_steps": 1024, "workers": 1, "envs_per_worker": 2,
            "a2c": {"steps_per_batch": 256}, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 2}
"""4 updates; 2 CPUs (a worker and the learner)."""


def test_jobs_acknowledged_just_before_sigkill_survive_and_run(spawn_server, tmp_path_factory, long_job):
    data_dir = tmp_path_factory.mktemp("crash") / "data"
    first = spawn_server(data_dir, A2C_MAX_RECOVERIES="0")
    with first.client() as client:
        running = client.post("/jobs", json=long_job).raise_for_status().json()["id"]
        client.wait_for(running, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] >= 2 * 512)

        def submit(n: int) -> dict:
            r = client.post("/jobs", json={**TINY_JOB, "seed": n}, headers={"Idempotency-Key": f"crash-{n}"})
            assert r.status_code == 201, r.text
            return r.json()

        with ThreadPoolExecutor(6) as pool:  # concurrent submissions, the last answered just before the kill
            acked = list(pool.map(submit, range(6)))
        drivers = first.driver_pids()
        assert len(drivers) == 1, drivers  # the running job's
        session = first.session_pids()  # its embedded Ray's daemons and actors among them
    first.kill()
    # Its driver exits too: left running, it would train on while the next server resumes the job.
    assert wait_gone(drivers) == []
    # So does all of its embedded Ray: Ray's dashboard and runtime-env agents outlived a killed
    # server by minutes, adopted by PID 1, until the server got a reaper (service/reaper.py).
    assert first.described(wait_gone(session, 30)) == []

    db = sqlite3.connect(data_dir / "jobs.sqlite3")  # what the dead server left, WAL included
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    finally:
        db.close()
    assert {j["id"] for j in acked} <= set(stored)
    assert {stored[j["id"]] for j in acked} == {"PENDING"} and stored[running] == "RUNNING"

    second = spawn_server(data_dir, A2C_MAX_RECOVERIES="0")
    with second.client() as client:
        job = client.get(f"/jobs/{running}").json()
        assert job["status"] == "FAILED", job
        assert job["error"]["type"] == "ServerRestarted"
        assert "server restarted while this job was RUNNING" in job["error"]["message"]
        assert job["ended"] is not None
        for posted in acked:
            job = client.wait_finished(posted["id"])
            assert job["status"] == "SUCCEEDED", job
            assert job["spec"] == posted["spec"] and job["created"] == posted["created"]
            assert job["progress"]["step"] == 1024
        # A client that never saw its 201 retries with the same key: the same job, not a new one.
        retry = client.post("/jobs", json={**TINY_JOB, "seed": 0}, headers={"Idempotency-Key": "crash-0"})
        assert retry.status_code == 201 and retry.json()["id"] == acked[0]["id"]
        assert retry.headers["idempotent-replayed"] == "true"
        assert len(client.get("/jobs").json()["jobs"]) == len(acked) + 1
    second.stop()
    db = sqlite3.connect(data_dir / "jobs.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
