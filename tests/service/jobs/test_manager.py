"""JobManager's scheduling, stopping and shutdown, with stand-in drivers (no Ray, no processes).

`FakeDriver` has JobProcess's methods: it reports "started", then waits to be told to finish,
stop (it then records a final checkpoint, as the trainer does) or to be cut off (`abandon`,
after which it raises what JobProcess raises when its child is gone).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from service.jobs.locations import JobLocations
from service.jobs.manager import JobLimits, JobManager
from service.records import JobStatus
from service.run.driver import DriverFailed, DriverRequest
from service.run.sinks import CheckpointInfo
from service.store import JobStore

JOB = {"env": "CartPole-v1", "total_steps": 4096, "envs_per_worker": 4, "a2c": {"steps_per_batch": 480}}


class FakeDriver:
    """A job's driver that trains until told otherwise."""

    def __init__(self, request: DriverRequest, drivers: dict[str, "FakeDriver"], ignores_stop: bool) -> None:
        self.request, self.ignores_stop = request, ignores_stop
        self.finish, self.stop, self.cut = threading.Event(), threading.Event(), threading.Event()
        drivers[request.job_id] = self

    def request_stop(self) -> None:
        if not self.ignores_stop:
            self.stop.set()

    def abandon(self) -> None:
        self.cut.set()

    def run(self, sink):
        sink.event("started", "fake driver")
        while not (self.finish.is_set() or self.stop.is_set()):
            if self.cut.wait(0.01):
                raise DriverFailed("DriverDied", "the job's driver process exited with code 3 before it "
                                   "reported an outcome")
        step = 512
        location = f"{self.request.location}/checkpoints/step-{step:010d}.tar.gz"
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(b"archive")
        ckpt = CheckpointInfo(f"step-{step:010d}", location, step, None, 7, time.time())
        sink.checkpoint(ckpt)
        status = JobStatus.STOPPED if self.stop.is_set() else JobStatus.SUCCEEDED
        return {"status": status, "steps": step}, ckpt


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


@pytest.fixture
def make_manager(store, tmp_path):
    """A started manager over the test's store, with FakeDrivers (by job id in `.drivers`)."""
    managers = []

    def make(cpus=lambda: 4.0, ignores_stop=False, **limits) -> JobManager:
        drivers: dict[str, FakeDriver] = {}
        manager = JobManager(store, JobLocations(tmp_path), JobLimits(**limits), cluster_cpus=cpus,
                             ray_address="127.0.0.1:9",
                             driver=lambda request: FakeDriver(request, drivers, ignores_stop))
        manager.drivers = drivers
        manager.start()
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.shutdown(grace_s=5)


def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


def status(store, job_id: str) -> str:
    return store.get_job(job_id).status


def events(store, job_id: str, kind: str) -> list[str]:
    return [e.message for e in store.events(job_id) if e.kind == kind]


def test_a_small_job_backfills_while_a_big_one_waits_and_yields_its_cpus_to_it(store, make_manager):
    # Issue 18d, live: 4 CPUs, A (1 worker) RUNNING, B (3 workers) PENDING; C (1 worker) stayed
    # PENDING with 2 CPUs free until B was stopped, and B never ran.
    manager = make_manager()
    a = manager.submit({**JOB, "workers": 1})[0].id
    wait_until(lambda: status(store, a) == "RUNNING", "A to run")
    b = manager.submit({**JOB, "workers": 3})[0].id
    c = manager.submit({**JOB, "workers": 1})[0].id
    wait_until(lambda: status(store, c) == "RUNNING", "C to backfill the 2 free CPUs")
    assert status(store, b) == "PENDING"
    assert events(store, c, "backfill") and b in events(store, c, "backfill")[0]

    manager.drivers[a].finish.set()  # A ends: B would fit if C gave its CPUs back
    wait_until(lambda: status(store, b) == "RUNNING", "B to run once C is paused")
    assert status(store, a) == "SUCCEEDED"
    assert events(store, c, "preempted") and b in events(store, c, "preempted")[0]
    job_c = store.get_job(c)
    assert job_c.status == "PENDING" and job_c.resume_step == 512, "C resumes from its checkpoint"
    assert any("paused it for the job at the head of the queue" in m for m in events(store, c, "requeued"))

    manager.drivers[b].finish.set()
    wait_until(lambda: status(store, c) == "RUNNING", "C to run again")
    assert manager.drivers[c].request.resume_location.endswith("step-0000000512.tar.gz")
    manager.drivers[c].finish.set()
    wait_until(lambda: status(store, c) == "SUCCEEDED", "C to finish")


def test_submit_and_stop_answer_while_rays_resource_query_hangs(store, make_manager):
    # Issue 18c: the scheduler asked Ray for the cluster's CPUs while it held the lock that
    # submit() and stop() need; with the query hung, POST /jobs and POST /jobs/{id}/stop hung.
    hung = threading.Event()
    manager = make_manager(cpus=lambda: hung.wait(60) and 4.0)
    try:
        answered: dict[str, object] = {}
        thread = threading.Thread(target=lambda: answered.update(job=manager.submit({**JOB, "workers": 1})[0]))
        thread.start()
        thread.join(15)
        assert not thread.is_alive() and answered["job"].status == "PENDING", "submit waited on Ray"
        job_id = answered["job"].id
        thread = threading.Thread(target=lambda: answered.update(stopped=manager.stop(job_id)))
        thread.start()
        thread.join(15)
        assert not thread.is_alive() and answered["stopped"].status == "STOPPED", "stop waited on Ray"
    finally:
        hung.set()


def test_a_job_cut_off_by_the_servers_shutdown_stays_resumable_never_failed(store, make_manager):
    # Issue 18b: past the grace, shutdown abandons the driver; the job's thread then saw its
    # driver die and wrote FAILED DriverDied (the server escaped it only by closing the store
    # first). The server's own shutdown must leave the job resumable.
    manager = make_manager(ignores_stop=True)  # its update never ends: the grace runs out
    job_id = manager.submit({**JOB, "workers": 1})[0].id
    wait_until(lambda: status(store, job_id) == "RUNNING", "the job to run")
    manager.shutdown(grace_s=0)
    job = store.get_job(job_id)  # the store is still open: the outcome is recorded by now
    assert job.status == "PENDING", (job.status, job.error)
    assert any("server shut down before the job wrote a final checkpoint" in m
               for m in events(store, job_id, "requeued"))
    assert not events(store, job_id, "failed")


def test_a_queued_job_whose_stored_spec_cannot_run_fails_and_the_queue_goes_on(store, make_manager, tmp_path):
    # Issue 18f: such a job made the scheduler raise on every pass, forever, and every job
    # queued behind it waited.
    bad, _ = store.create_job("0123456789ab", {**JOB, "workers": "two"}, created=1.0)
    gone, _ = store.create_job("0123456789ac", {**JOB, "env": "Gone-v0"}, created=2.0)
    good, _ = store.create_job("0123456789ad", {**JOB, "workers": 1}, created=3.0)
    manager = make_manager()
    wait_until(lambda: status(store, good.id) == "RUNNING", "the valid job behind them to run")
    for job, field in ((bad, "workers"), (gone, "env")):
        failed = store.get_job(job.id)
        assert failed.status == "FAILED" and failed.error_type == "InvalidStoredSpec", failed
        assert failed.error.startswith(f"its stored spec cannot run: {field}"), failed.error
    manager.drivers[good.id].finish.set()
    wait_until(lambda: status(store, good.id) == "SUCCEEDED", "the valid job to finish")


def test_a_queued_job_bigger_than_the_cluster_fails_with_the_reason(store, make_manager):
    big, _ = store.create_job("0123456789ab", {**JOB, "workers": 5}, created=1.0)
    manager = make_manager(cpus=lambda: 4.0)
    wait_until(lambda: status(store, big.id) == "FAILED", "the job to fail")
    assert store.get_job(big.id).error == ("it needs 6 CPUs (one per rollout worker and one for the learner) "
                                           "and the whole cluster has 4")
    assert manager.submit({**JOB, "workers": 1})[0].status == "PENDING"


def test_a_job_stopped_between_admission_and_its_driver_starts_no_driver(store, make_manager):
    # Issue 23, item 8: a stop while the job was admitted but still PENDING started its actors
    # and wrote a step-0 checkpoint. The condition is re-entrant: holding it, the test admits the
    # job (its thread then waits for the lock) and stops it before the thread can go on.
    manager = make_manager()
    with manager._cond:
        job_id = manager.submit({**JOB, "workers": 1})[0].id
        manager._admit()
        assert job_id in manager._active and status(store, job_id) == "PENDING"
        assert manager.wait_state(job_id) == {"starting": True}
        manager.stop(job_id)
    wait_until(lambda: status(store, job_id) == "STOPPED", "the job to end STOPPED")
    assert job_id not in manager.drivers  # no driver process, so no actor
    assert store.checkpoints(job_id) == [] and events(store, job_id, "started") == []
    wait_until(lambda: job_id not in manager._active, "its CPUs to be released")


def test_wait_state_gives_a_queued_jobs_place_and_the_cpus_it_waits_for(store, make_manager):
    manager = make_manager(cpus=lambda: 2.0)
    first = manager.submit({**JOB, "workers": 1})[0].id  # 2 CPUs: the whole cluster
    wait_until(lambda: status(store, first) == "RUNNING", "the first job to run")
    second = manager.submit({**JOB, "workers": 1})[0].id
    third = manager.submit({**JOB, "workers": 1})[0].id
    assert manager.wait_state(second) == {"starting": False, "place": 1, "queued": 2, "cpus_needed": 2,
                                          "cpus_free": 0, "cpus_total": 2.0}
    assert manager.wait_state(third)["place"] == 2
    assert manager.wait_state(first) is None
    manager.stop(third)
    assert manager.wait_state(third) is None and manager.wait_state(second)["queued"] == 1
    manager.drivers[first].finish.set()
