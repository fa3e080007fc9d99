"""JobStore on a real SQLite file: jobs, idempotency, pages, metrics order, checkpoints, restart."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from service.store import CheckpointRow, JobStore

SPEC = {"env": "CartPole-v1", "total_steps": 2048, "workers": 2}


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_database_uses_wal_journal(store):
    assert store.journal_mode() == "wal"


def test_new_job_is_pending_with_a_submitted_event(store):
    job, created = store.create_job("a" * 12, SPEC)
    assert created and job.status == "PENDING" and job.step == 0 and job.total_steps == 2048
    assert job.spec == SPEC and not job.finished
    assert [e.kind for e in store.events(job.id)] == ["submitted"]


def test_idempotency_key_returns_the_first_job_instead_of_a_second(store):
    first, created = store.create_job("a" * 12, SPEC, idempotency_key="k1", request_hash="h")
    again, created_again = store.create_job("b" * 12, SPEC, idempotency_key="k1", request_hash="h")
    assert created and not created_again and again.id == first.id
    assert store.get_job("b" * 12) is None
    assert store.job_by_idempotency_key("k1").id == first.id


def test_state_moves_pending_running_succeeded_and_never_leaves_a_terminal_state(store):
    store.create_job("a" * 12, SPEC)
    assert store.mark_running("a" * 12)
    assert store.get_job("a" * 12).started is not None
    assert store.finish("a" * 12, "SUCCEEDED", summary={"steps": 2048, "loss": math.nan})
    job = store.get_job("a" * 12)
    assert job.status == "SUCCEEDED" and job.ended is not None and job.summary == {"steps": 2048, "loss": None}
    assert not store.finish("a" * 12, "FAILED", error="late")
    assert not store.mark_running("a" * 12)
    assert not store.request_stop("a" * 12)
    assert store.get_job("a" * 12).status == "SUCCEEDED"


def test_failed_job_keeps_error_text_and_type(store):
    store.create_job("a" * 12, SPEC)
    store.finish("a" * 12, "FAILED", error="actor died", error_type="TrainingFailed")
    job = store.get_job("a" * 12)
    assert (job.status, job.error, job.error_type) == ("FAILED", "actor died", "TrainingFailed")


def test_list_is_newest_first_filtered_by_status_and_paged_by_keyset(store):
    for i in range(5):
        store.create_job(f"{i:012x}", SPEC, created=1000.0 + i)
    store.finish(f"{1:012x}", "STOPPED")
    assert [j.id[-1] for j in store.list_jobs()] == ["4", "3", "2", "1", "0"]
    assert [j.id[-1] for j in store.list_jobs(["STOPPED"])] == ["1"]
    assert [j.id[-1] for j in store.list_jobs(["PENDING", "STOPPED"], limit=2)] == ["4", "3"]
    page = store.list_jobs(limit=2, before=(1003.0, f"{3:012x}"))
    assert [j.id[-1] for j in page] == ["2", "1"]


def test_equal_creation_times_page_by_id_without_skipping_or_repeating(store):
    for i in range(4):
        store.create_job(f"{i:012x}", SPEC, created=5.0)
    first = store.list_jobs(limit=2)
    rest = store.list_jobs(limit=10, before=(first[-1].created, first[-1].id))
    assert [j.id for j in first + rest] == [f"{i:012x}" for i in (3, 2, 1, 0)]


def test_metrics_come_back_in_step_order_after_since_step_and_advance_progress(store):
    store.create_job("a" * 12, SPEC)
    for step in (512, 1024, 1536, 2048):
        store.append_metrics("a" * 12, {"step": step, "loss": step / 1000})
    assert [r["step"] for r in store.metrics("a" * 12)] == [512, 1024, 1536, 2048]
    assert [r["step"] for r in store.metrics("a" * 12, since_step=1024)] == [1536, 2048]
    assert [r["step"] for r in store.metrics("a" * 12, since_step=0, limit=2)] == [512, 1024]
    assert store.latest_metrics("a" * 12) == {"step": 2048, "loss": 2.048}
    assert store.get_job("a" * 12).step == 2048


def test_eval_summary_gives_the_final_and_best_evaluation_in_step_order(store):
    store.create_job("a" * 12, SPEC)
    assert store.eval_summary("a" * 12) is None
    for step, value in ((512, None), (1024, 40.0), (1536, None), (2048, 95.5), (2560, 70.25)):
        store.append_metrics("a" * 12, {"step": step, "loss": 0.1, **({"eval_return_mean": value} if value else {})})
    assert store.eval_summary("a" * 12) == {"final": 70.25, "best": 95.5, "count": 3}


def test_metrics_rows_stay_valid_json_with_nan_inf_and_numpy_values(store):
    store.create_job("a" * 12, SPEC)
    store.append_metrics("a" * 12, {"step": np.int64(512), "explained_variance": math.nan,
                                    "grad_norm": np.float32(1.5), "value_loss": math.inf})
    assert store.metrics("a" * 12) == [{"step": 512, "explained_variance": None, "grad_norm": 1.5,
                                       "value_loss": None}]


def test_latest_checkpoint_is_the_highest_step(store):
    store.create_job("a" * 12, SPEC)
    assert store.checkpoint("a" * 12, "latest") is None
    for step in (1024, 2048):
        store.add_checkpoint("a" * 12, CheckpointRow(f"step-{step:010d}", step, 9.5, 100, 1.0,
                                                     f"jobs/{'a' * 12}/checkpoints/step-{step:010d}.tar.gz"))
    assert [c.step for c in store.checkpoints("a" * 12)] == [1024, 2048]
    assert store.checkpoint("a" * 12, "latest").id == "step-0000002048"
    assert store.checkpoint("a" * 12, "step-0000001024").step == 1024
    assert store.checkpoint("a" * 12, "step-0000000512") is None


def test_best_checkpoint_is_the_highest_evaluation_return_of_equals_the_later(store):
    store.create_job("a" * 12, SPEC)
    path = "jobs/{0}/checkpoints/step-{1:010d}.tar.gz"
    store.add_checkpoint("a" * 12, CheckpointRow("step-0000000512", 512, 9.0, 100, 1.0, path.format("a" * 12, 512)))
    assert store.checkpoint("a" * 12, "best") is None  # checkpointed, but never evaluated
    for step, evaluated in ((1024, 480.0), (1536, 500.0), (2048, 500.0), (2560, 310.0), (3072, None)):
        store.add_checkpoint("a" * 12, CheckpointRow(f"step-{step:010d}", step, 400.0, 100, 1.0,
                                                     path.format("a" * 12, step), evaluated))
    assert store.checkpoint("a" * 12, "best").id == "step-0000002048"
    assert store.checkpoint("a" * 12, "best").eval_return_mean == 500.0
    assert store.checkpoint("a" * 12, "latest").id == "step-0000003072"
    assert [c.eval_return_mean for c in store.checkpoints("a" * 12)] == [None, 480.0, 500.0, 500.0, 310.0, None]


def test_a_version_1_database_gains_the_eval_column_and_keeps_its_rows(tmp_path):
    import sqlite3
    path = tmp_path / "jobs.sqlite3"
    first = JobStore(path)
    first.create_job("a" * 12, SPEC)
    first.close()
    conn = sqlite3.connect(path)  # back to the version-1 checkpoints table, as an older service left it
    conn.executescript("""
        ALTER TABLE checkpoints DROP COLUMN eval_return_mean;
        INSERT INTO checkpoints VALUES ('aaaaaaaaaaaa', 'step-0000000512', 512, 20.0, 10, 1.0, 'p');
        PRAGMA user_version=1;""")
    conn.close()
    store = JobStore(path)
    try:
        old = store.checkpoint("a" * 12, "latest")
        assert (old.step, old.return_mean, old.eval_return_mean) == (512, 20.0, None)
        store.add_checkpoint("a" * 12, CheckpointRow("step-0000001024", 1024, 30.0, 10, 2.0, "q", 450.0))
        assert store.checkpoint("a" * 12, "best").id == "step-0000001024"
    finally:
        store.close()


def test_requeue_drops_metrics_past_the_resume_point_and_counts_recoveries(store):
    store.create_job("a" * 12, SPEC)
    store.mark_running("a" * 12)
    for step in (512, 1024, 1536):
        store.append_metrics("a" * 12, {"step": step})
    store.requeue("a" * 12, "jobs/x/checkpoints/step-0000001024.tar.gz", 1024, "restarted", count_recovery=True)
    job = store.get_job("a" * 12)
    assert (job.status, job.step, job.resume_step, job.recoveries) == ("PENDING", 1024, 1024, 1)
    assert job.resume_path.endswith("step-0000001024.tar.gz")
    assert [r["step"] for r in store.metrics("a" * 12)] == [512, 1024]
    assert store.events("a" * 12)[-1].message == "restarted"


def test_stop_request_is_recorded_for_unfinished_jobs(store):
    store.create_job("a" * 12, SPEC)
    assert store.request_stop("a" * 12)
    assert store.get_job("a" * 12).stop_requested


def test_everything_survives_reopening_the_file(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = JobStore(path)
    first.create_job("a" * 12, SPEC)
    first.append_metrics("a" * 12, {"step": 512})
    first.add_checkpoint("a" * 12, CheckpointRow("step-0000000512", 512, None, 10, 1.0, "p"))
    first.finish("a" * 12, "SUCCEEDED")
    first.close()
    again = JobStore(path)
    assert again.get_job("a" * 12).status == "SUCCEEDED"
    assert again.metrics("a" * 12) == [{"step": 512}]
    assert again.checkpoint("a" * 12, "latest").step == 512
    again.close()


def test_unfinished_jobs_are_pending_and_running_oldest_first(store):
    for i, status in enumerate(["RUNNING", "SUCCEEDED", "PENDING"]):
        store.create_job(f"{i:012x}", SPEC, created=float(i))
        if status == "RUNNING":
            store.mark_running(f"{i:012x}")
        elif status == "SUCCEEDED":
            store.finish(f"{i:012x}", status)
    assert [(j.id[-1], j.status) for j in store.unfinished_jobs()] == [("0", "RUNNING"), ("2", "PENDING")]


def test_concurrent_writers_from_threads_lose_no_rows(store):
    for t in range(4):
        store.create_job(f"{t:012x}", SPEC)

    def write(t: int) -> None:
        for step in range(1, 201):
            store.append_metrics(f"{t:012x}", {"step": step})

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(len(store.metrics(f"{t:012x}", limit=1000)) == 200 for t in range(4))


def test_newer_schema_version_is_refused(tmp_path):
    import sqlite3

    from service.store import StoreError
    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        JobStore(path)


def test_rewind_drops_rows_past_the_step_so_the_resumed_run_replaces_them(store):
    job_id = "b" * 12
    store.create_job(job_id, SPEC)
    store.mark_running(job_id)
    for step in (512, 1024, 1536, 2048):
        store.append_metrics(job_id, {"step": step, "run": "first"})
    assert store.rewind(job_id, 1024) == 2
    assert store.get_job(job_id).step == 1024
    for step in (1536, 2048, 2560):  # the resumed run records those steps again, then goes on
        store.append_metrics(job_id, {"step": step, "run": "resumed"})
    rows = store.metrics(job_id)
    assert [(r["step"], r["run"]) for r in rows] == [
        (512, "first"), (1024, "first"), (1536, "resumed"), (2048, "resumed"), (2560, "resumed")]
    assert store.get_job(job_id).step == 2560


def test_reads_do_not_wait_for_a_write_in_progress_and_see_each_commit(store):
    """A request thread reads while a progress writer holds the write lock (WAL: readers see the
    last commit), so a slow reader can never hold up the writer, nor the writer a reader."""
    job, _ = store.create_job("a" * 12, SPEC)
    store.append_metrics(job.id, {"step": 512})
    in_write, release = threading.Event(), threading.Event()

    def slow_write():
        with store._write() as conn:
            conn.execute("UPDATE jobs SET step = 1024 WHERE id = ?", (job.id,))
            in_write.set()
            release.wait(10)

    writer = threading.Thread(target=slow_write)
    writer.start()
    try:
        assert in_write.wait(10)
        read = []
        reader = threading.Thread(target=lambda: read.append(store.get_job(job.id).step))
        reader.start()
        reader.join(5)
        assert read == [512], "the read waited for the write lock, or saw an uncommitted row"
    finally:
        release.set()
        writer.join()
    assert store.get_job(job.id).step == 1024


def test_a_version_1_file_gains_sweeps_and_keeps_its_jobs(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)  # the jobs table as version 1 had it (no sweep_id)
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, created REAL NOT NULL, status TEXT NOT NULL,"
                 " env TEXT NOT NULL, spec TEXT NOT NULL, total_steps INTEGER NOT NULL, step INTEGER NOT NULL"
                 " DEFAULT 0, started REAL, ended REAL, error TEXT, error_type TEXT, summary TEXT,"
                 " idempotency_key TEXT UNIQUE, request_hash TEXT, resumed_from_job TEXT,"
                 " resumed_from_checkpoint TEXT, resume_path TEXT, resume_step INTEGER NOT NULL DEFAULT 0,"
                 " stop_requested INTEGER NOT NULL DEFAULT 0, recoveries INTEGER NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO jobs (id, created, status, env, spec, total_steps) VALUES"
                 " ('0123456789ab', 1.0, 'SUCCEEDED', 'CartPole-v1', '{}', 2048)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    store = JobStore(path)
    old = store.get_job("0123456789ab")
    assert old.status == "SUCCEEDED" and old.sweep_id is None
    sweep, created = store.create_sweep("fedcba987654", {"base": {}})
    assert created and store.get_sweep(sweep.id).status == "PENDING"
    job, _ = store.create_job("00000000000a", SPEC, sweep_id=sweep.id)
    assert [j.id for j in store.sweep_jobs(sweep.id)] == [job.id] == [j.id for j in store.list_jobs(sweep_id=sweep.id)]
    store.close()


def test_best_metrics_rank_each_trial_job_by_its_best_row(store):
    for job_id, values in (("00000000000a", [1.0, 5.0, None]), ("00000000000b", [2.0, 3.0, 4.0])):
        store.create_job(job_id, SPEC, sweep_id="fedcba987654")
        for step, value in enumerate(values, start=1):
            store.append_metrics(job_id, {"step": step * 10, "eval_return_mean": value})
    store.create_job("00000000000c", SPEC)  # not a trial
    store.append_metrics("00000000000c", {"step": 10, "eval_return_mean": 99.0})
    assert store.best_metrics("fedcba987654", "eval_return_mean", "max") == {
        "00000000000a": (5.0, 20), "00000000000b": (4.0, 30)}
    assert store.best_metrics("fedcba987654", "eval_return_mean", "min") == {
        "00000000000a": (1.0, 10), "00000000000b": (2.0, 10)}
