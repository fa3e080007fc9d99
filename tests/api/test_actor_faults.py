"""Actor crashes under a real `a2c serve`: the job's events tell, and no metrics row is lost or doubled.

The faults are injected for real: SIGKILL of the server's Ray worker processes that host a
RolloutWorker, then the Learner (found by their process titles, `ray::RolloutWorker...`,
among the processes of the server's own session).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.api.conftest import actor_pids, start_server

JOB = {"env": "CartPole-v1", "total_steps": 4_000_000, "workers": 2, "envs_per_worker": 4,
       "a2c": {"steps_per_batch": 512}, "eval_every": 0, "checkpoint_every": 40}
"""An update takes ~50 ms here: 40 of them leave the test time to kill the learner 3 updates past a
checkpoint, before the next one makes the rows past it (which must be replaced) disappear."""


class EventLog:
    """Every event of a job seen over successive GET /jobs/{id} (which shows the last 50)."""

    def __init__(self, client, job_id):
        self.client, self.job_id, self.seen = client, job_id, {}

    def poll(self) -> dict:
        job = self.client.get(f"/jobs/{self.job_id}").raise_for_status().json()
        for e in job["events"]:
            self.seen[(e["time"], e["kind"], e["message"])] = e
        return job

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in sorted(self.seen)]

    def messages(self, kind: str) -> list[str]:
        return [message for _, k, message in sorted(self.seen) if k == kind]

    def wait(self, predicate, what: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.poll()
            if predicate(job):
                return job
            if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
                pytest.fail(f"{what}: job is {job['status']} at step {job['progress']['step']}; "
                            f"events {self.kinds()}; error {job.get('error')}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    """A server of its own, so that every RolloutWorker and Learner process in it is this test's."""
    server = start_server(tmp_path_factory)
    yield server
    server.stop()


def test_killed_worker_and_learner_show_in_the_job_events_and_rows_stay_one_per_step(fault_server):
    session = fault_server.proc.pid  # started with start_new_session: its pid is the session id
    with fault_server.client() as client:
        job_id = client.post("/jobs", json=JOB).raise_for_status().json()["id"]
        log = EventLog(client, job_id)
        log.wait(lambda j: j["status"] == "RUNNING" and j["progress"]["step"] >= 3 * 512, "3 updates")

        workers = actor_pids(session, "RolloutWorker")
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        log.wait(lambda j: "worker_replaced" in log.kinds(), "the worker's replacement")
        assert log.messages("worker_lost")[0].startswith("worker ") and " died: " in log.messages("worker_lost")[0]

        def checkpoints():
            return client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]

        log.wait(lambda j: checkpoints(), "a checkpoint")
        ckpt_step = checkpoints()[-1]["step"]
        # Rows past the checkpoint, which the restarted learner must replace, not double.
        log.wait(lambda j: j["progress"]["step"] >= ckpt_step + 3 * 512, "updates past the checkpoint")
        learners = actor_pids(session, "Learner")
        assert len(learners) == 1, learners
        os.kill(learners[0], signal.SIGKILL)
        log.wait(lambda j: "learner_restarted" in log.kinds(), "the learner's restart")
        restarted_from = client.get(f"/jobs/{job_id}").json()["progress"]["step"]
        log.wait(lambda j: j["progress"]["step"] >= restarted_from + 3 * 512, "updates after the restart")

        assert client.post(f"/jobs/{job_id}/stop").status_code == 202
        job = client.wait_finished(job_id)
        log.poll()
        assert job["status"] == "STOPPED", job
        lost = log.messages("learner_lost")
        assert len(lost) == 1 and "restarting it from checkpoint step-" in lost[0], lost
        assert "metrics_rewound" in log.kinds()
        assert log.kinds().count("device") == 2
        rows = client.all_metrics(job_id)
        assert [r["step"] for r in rows] == [512 * k for k in range(1, len(rows) + 1)]
        assert rows[-1]["step"] == job["progress"]["step"]
