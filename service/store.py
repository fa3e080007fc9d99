"""`JobStore`: the service's SQLite database of jobs, their events, metrics rows and checkpoints.

The API process is the only writer. Writes (the threads that record the jobs' progress, sent by
their driver processes, and the request threads that submit or stop jobs) go through one
connection under a lock. Reads go through a second connection under their own lock: in WAL mode
a reader never blocks the writer, so a request thread that is slow to be scheduled (request
handling runs at a lower priority) cannot hold up a metrics row. WAL mode also keeps a crash
from corrupting the file and lets outside readers (`sqlite3 jobs.sqlite3`) look while the
server runs.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from service.records import TERMINAL, JobStatus

SCHEMA_VERSION = 3
"""2: checkpoints.eval_return_mean (the best checkpoint); 3: the sweeps table and jobs.sweep_id.
An older file is migrated on open (`_ADDED_COLUMNS`)."""
_UNFINISHED = f"('{JobStatus.PENDING.value}', '{JobStatus.RUNNING.value}')"
"""The states a job can still leave, as an SQL list (the store keeps JobStatus values)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    env TEXT NOT NULL,
    spec TEXT NOT NULL,
    total_steps INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    started REAL,
    ended REAL,
    error TEXT,
    error_type TEXT,
    summary TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    resumed_from_job TEXT,
    resumed_from_checkpoint TEXT,
    resume_path TEXT,
    resume_step INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    recoveries INTEGER NOT NULL DEFAULT 0,
    sweep_id TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created DESC);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step INTEGER NOT NULL,
    row TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS metrics_by_job_step ON metrics (job_id, step);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    id TEXT NOT NULL,
    step INTEGER NOT NULL,
    return_mean REAL,
    size_bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    path TEXT NOT NULL,
    eval_return_mean REAL,
    PRIMARY KEY (job_id, id)
);
CREATE INDEX IF NOT EXISTS checkpoints_by_job_step ON checkpoints (job_id, step);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    started REAL,
    ended REAL,
    reason TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    trial_errors TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sweeps_by_created ON sweeps (created DESC, id DESC);
"""

_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("checkpoints", "eval_return_mean", "REAL"),  # version 2
    ("jobs", "sweep_id", "TEXT"),  # version 3
)
"""(table, column, type) of each column added since version 1: an older file gets the ones its
tables lack, then the schema creates what is missing altogether (tables, indexes)."""

_CHECKPOINT_COLUMNS = "id, step, return_mean, size_bytes, created, path, eval_return_mean"


class StoreError(RuntimeError):
    """The database cannot be used (e.g. written by a newer version of the service)."""


@dataclass(frozen=True)
class JobRow:
    """One job as stored: its validated spec, state, progress and timings (epoch seconds)."""

    id: str
    created: float
    status: JobStatus
    env: str
    spec: dict[str, Any]
    total_steps: int
    step: int
    started: float | None
    ended: float | None
    error: str | None
    error_type: str | None
    summary: dict[str, Any] | None
    idempotency_key: str | None
    request_hash: str | None
    resumed_from_job: str | None
    resumed_from_checkpoint: str | None
    resume_path: str | None
    """Archive (relative to the data dir) the next run starts from; None: from scratch."""
    resume_step: int
    """The step that archive holds (0 from scratch)."""
    stop_requested: bool
    recoveries: int
    """How many server restarts this job has been resumed after."""
    sweep_id: str | None = None
    """The sweep this job is a trial of (service/sweeps), if any."""

    @property
    def finished(self) -> bool:
        """Whether the job is in a terminal state."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class SweepRow:
    """One sweep as stored: its validated spec (service/sweeps/spec.py), state and timings."""

    id: str
    created: float
    status: JobStatus
    spec: dict[str, Any]
    started: float | None
    ended: float | None
    reason: str | None
    """Why it ended as it did (or the note of its last change), for people."""
    idempotency_key: str | None
    request_hash: str | None
    stop_requested: bool
    trial_errors: dict[str, str]
    """Tune trial id -> why that trial errored (its job failed, or it never got one)."""

    @property
    def finished(self) -> bool:
        """Whether the sweep is in a terminal state."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class EventRow:
    """A line of a job's history."""

    time: float
    kind: str
    message: str


@dataclass(frozen=True)
class CheckpointRow:
    """A checkpoint archive of a job; `path` is relative to the data dir."""

    id: str
    step: int
    return_mean: float | None
    size_bytes: int
    created: float
    path: str
    eval_return_mean: float | None = None
    """The deterministic evaluation's mean return at this checkpoint's step; None when no
    evaluation ran at that step."""


def _json_safe(value: Any) -> Any:
    """`value` with numpy scalars made plain and NaN/inf made None, so rows stay valid JSON."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_json_safe(value), allow_nan=False)


def _job(row: sqlite3.Row) -> JobRow:
    data = dict(row)
    data["spec"] = json.loads(data["spec"])
    data["summary"] = json.loads(data["summary"]) if data["summary"] else None
    data["status"] = JobStatus(data["status"])
    data["stop_requested"] = bool(data["stop_requested"])
    return JobRow(**data)


def _sweep(row: sqlite3.Row) -> SweepRow:
    data = dict(row)
    data["spec"] = json.loads(data["spec"])
    data["status"] = JobStatus(data["status"])
    data["stop_requested"] = bool(data["stop_requested"])
    data["trial_errors"] = json.loads(data["trial_errors"])
    return SweepRow(**data)


class JobStore:
    """Jobs, events, metrics rows and checkpoint records in one SQLite file (WAL mode)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = self._connect()
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed row survives a process crash (only power loss can
        # drop the last transactions), and a metrics row per update costs no fsync.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this service reads "
                             f"{SCHEMA_VERSION} (was it written by a newer a2c-service?)")
        with self._write() as conn:
            if version < SCHEMA_VERSION:  # an older file first gets its missing columns, then the schema
                for table, column, kind in _ADDED_COLUMNS:
                    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if have and column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            # One statement at a time: executescript() would commit outside this transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_sweep ON jobs (sweep_id, created)")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._read_lock = threading.Lock()
        self._reader = self._connect()  # after the schema exists; autocommit: each read sees the latest commit

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken under the lock (BEGIN IMMEDIATE: no upgrade deadlock)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the database (the last connection to close checkpoints the WAL into the main file)."""
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._conn.close()

    def journal_mode(self) -> str:
        """The SQLite journal mode in use ("wal")."""
        return self._read("PRAGMA journal_mode")[0][0]

    def check_writable(self) -> None:
        """Raise if the database cannot take a write lock right now (for /readyz)."""
        with self._write():
            pass

    # Jobs

    def create_job(self, job_id: str, spec: dict[str, Any], *, idempotency_key: str | None = None,
                   request_hash: str | None = None, resumed_from_job: str | None = None,
                   resumed_from_checkpoint: str | None = None, resume_path: str | None = None,
                   resume_step: int = 0, created: float | None = None,
                   sweep_id: str | None = None) -> tuple[JobRow, bool]:
        """Insert a PENDING job; returns (job, created).

        With an idempotency key already in use, nothing is inserted and the job that holds the
        key comes back with created=False.
        """
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO jobs (id, created, status, env, spec, total_steps, step,"
                    " idempotency_key, request_hash, resumed_from_job, resumed_from_checkpoint,"
                    " resume_path, resume_step, sweep_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, time.time() if created is None else created, JobStatus.PENDING.value, spec["env"],
                     _dumps(spec), spec["total_steps"],
                     resume_step, idempotency_key, request_hash, resumed_from_job,
                     resumed_from_checkpoint, resume_path, resume_step, sweep_id))
                conn.execute("INSERT INTO events (job_id, time, kind, message) VALUES (?, ?, ?, ?)",
                             (job_id, time.time(), "submitted", f"{spec['env']}, {spec['total_steps']} steps"))
        except sqlite3.IntegrityError:
            existing = self.job_by_idempotency_key(idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return existing, False
        return self.get_job(job_id), True

    def get_job(self, job_id: str) -> JobRow | None:
        """The job, or None."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def job_by_idempotency_key(self, key: str) -> JobRow | None:
        """The job submitted with this Idempotency-Key, or None."""
        rows = self._read("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
        return _job(rows[0]) if rows else None

    def list_jobs(self, statuses: list[str] | None = None, limit: int = 50,
                  before: tuple[float, str] | None = None, sweep_id: str | None = None) -> list[JobRow]:
        """Jobs newest first, optionally only those in `statuses` (and of sweep `sweep_id`),
        after the keyset `before`.

        `before` is (created, id) of the last job of the previous page.
        """
        where, args = [], []
        if sweep_id is not None:
            where.append("sweep_id = ?")
            args.append(sweep_id)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if before is not None:
            where.append("(created < ? OR (created = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        return [_job(r) for r in self._read(sql, (*args, limit))]

    def unfinished_jobs(self) -> list[JobRow]:
        """PENDING and RUNNING jobs, oldest first (what a restarted server must take care of)."""
        rows = self._read(f"SELECT * FROM jobs WHERE status IN {_UNFINISHED}"
                          " ORDER BY created, id")
        return [_job(r) for r in rows]

    def _event(self, conn: sqlite3.Connection, job_id: str, kind: str, message: str) -> None:
        conn.execute("INSERT INTO events (job_id, time, kind, message) VALUES (?, ?, ?, ?)",
                     (job_id, time.time(), kind, message))

    def mark_running(self, job_id: str) -> bool:
        """PENDING -> RUNNING (the first start time is kept across restarts); False if not PENDING."""
        with self._write() as conn:
            cur = conn.execute("UPDATE jobs SET status = 'RUNNING', started = COALESCE(started, ?)"
                               " WHERE id = ? AND status = 'PENDING'", (time.time(), job_id))
        return cur.rowcount == 1

    def finish(self, job_id: str, status: str, *, summary: dict[str, Any] | None = None,
               error: str | None = None, error_type: str | None = None) -> bool:
        """Move an unfinished job to a terminal state, with an event; False if already terminal."""
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a terminal state")
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = ?, ended = ?, summary = ?, error = ?, error_type = ?"
                f" WHERE id = ? AND status IN {_UNFINISHED}",
                (status, time.time(), _dumps(summary) if summary else None, error, error_type, job_id))
            if cur.rowcount:
                self._event(conn, job_id, status.lower(), error or status)
        return cur.rowcount == 1

    def requeue(self, job_id: str, resume_path: str | None, from_step: int, reason: str,
                count_recovery: bool = False) -> None:
        """Put an unfinished job back to PENDING, to run again from `resume_path` (or scratch).

        `from_step` is where that run starts; metrics rows past it are dropped, as the run
        repeats those steps and rows must keep increasing.
        """
        with self._write() as conn:
            self._rewind(conn, job_id, from_step)
            conn.execute("UPDATE jobs SET status = 'PENDING', resume_path = ?, resume_step = ?,"
                         f" recoveries = recoveries + ? WHERE id = ? AND status IN {_UNFINISHED}",
                         (resume_path, from_step, int(count_recovery), job_id))
            self._event(conn, job_id, "requeued", reason)

    def rewind(self, job_id: str, step: int) -> int:
        """Drop the job's metrics rows past `step` and set its progress back to `step`.

        For a run that goes back to the checkpoint at `step` (a restarted learner): it records
        those steps again, so the rows past it would otherwise be stale or, under the unique
        (job, step) index, half old and half new. Returns how many rows were dropped.
        """
        with self._write() as conn:
            return self._rewind(conn, job_id, step)

    @staticmethod
    def _rewind(conn: sqlite3.Connection, job_id: str, step: int) -> int:
        dropped = conn.execute("DELETE FROM metrics WHERE job_id = ? AND step > ?", (job_id, step)).rowcount
        conn.execute("UPDATE jobs SET step = ? WHERE id = ?", (step, job_id))
        return dropped

    def request_stop(self, job_id: str, reason: str = "stop requested") -> bool:
        """Record that a stop was asked for (it survives a restart), with `reason` as the event;
        False if already terminal."""
        with self._write() as conn:
            cur = conn.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?"
                               f" AND status IN {_UNFINISHED}", (job_id,))
            if cur.rowcount:
                self._event(conn, job_id, "stop", reason)
        return cur.rowcount == 1

    # Events

    def add_event(self, job_id: str, kind: str, message: str) -> None:
        """Append a line to the job's history."""
        with self._write() as conn:
            self._event(conn, job_id, kind, message)

    def events(self, job_id: str, limit: int = 100) -> list[EventRow]:
        """The job's last `limit` events, oldest first."""
        rows = self._read("SELECT time, kind, message FROM events WHERE job_id = ?"
                          " ORDER BY seq DESC LIMIT ?", (job_id, limit))
        return [EventRow(*r) for r in reversed(rows)]

    # Metrics

    def append_metrics(self, job_id: str, row: dict[str, Any]) -> None:
        """Store one metrics row (NaN/inf become null) and advance the job's progress."""
        step = int(row["step"])
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO metrics (job_id, step, row) VALUES (?, ?, ?)",
                         (job_id, step, _dumps(row)))
            conn.execute("UPDATE jobs SET step = MAX(step, ?) WHERE id = ?", (step, job_id))

    def metrics(self, job_id: str, since_step: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Rows with step > since_step, in step order, at most `limit`."""
        return [json.loads(row) for _, row in self.metrics_json(job_id, since_step, limit)]

    def metrics_json(self, job_id: str, since_step: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        """The same rows as (step, the row as stored: a JSON object), for sending on unparsed."""
        return [(r[0], r[1]) for r in self._read(
            "SELECT step, row FROM metrics WHERE job_id = ? AND step > ? ORDER BY step LIMIT ?",
            (job_id, since_step, limit))]

    def status_counts(self) -> dict[str, int]:
        """How many jobs are in each state (states with none are left out)."""
        return {r[0]: r[1] for r in self._read("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    def update_counts(self) -> dict[str, int]:
        """How many metrics rows (one per update) each job has, by job id."""
        return {r[0]: r[1] for r in self._read("SELECT job_id, COUNT(*) FROM metrics GROUP BY job_id")}

    def eval_summary(self, job_id: str) -> dict[str, Any] | None:
        """The job's evaluations: {"final", "best", "count"} of `eval_return_mean`, or None if none yet."""
        rows = self._read(
            "SELECT json_extract(row, '$.eval_return_mean') FROM metrics WHERE job_id = ? "
            "AND json_extract(row, '$.eval_return_mean') IS NOT NULL ORDER BY step", (job_id,))
        values = [r[0] for r in rows]
        if not values:
            return None
        return {"final": values[-1], "best": max(values), "count": len(values)}

    def latest_metrics(self, job_id: str) -> dict[str, Any] | None:
        """The row with the highest step, or None."""
        rows = self._read("SELECT row FROM metrics WHERE job_id = ? ORDER BY step DESC LIMIT 1", (job_id,))
        return json.loads(rows[0][0]) if rows else None

    # Checkpoints

    def add_checkpoint(self, job_id: str, ckpt: CheckpointRow) -> None:
        """Record a written archive (a rewrite of the same id replaces the record)."""
        with self._write() as conn:
            conn.execute(f"INSERT OR REPLACE INTO checkpoints (job_id, {_CHECKPOINT_COLUMNS})"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (job_id, ckpt.id, ckpt.step, _json_safe(ckpt.return_mean), ckpt.size_bytes,
                          ckpt.created, ckpt.path, _json_safe(ckpt.eval_return_mean)))
            evaluated = f", eval {ckpt.eval_return_mean:.1f}" if ckpt.eval_return_mean is not None else ""
            self._event(conn, job_id, "checkpoint", f"{ckpt.id} ({ckpt.size_bytes} bytes{evaluated})")

    def checkpoints(self, job_id: str) -> list[CheckpointRow]:
        """The job's checkpoints in step order."""
        rows = self._read(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = ? ORDER BY step",
                          (job_id,))
        return [CheckpointRow(*r) for r in rows]

    def checkpoint(self, job_id: str, ckpt_id: str) -> CheckpointRow | None:
        """One checkpoint by id. "latest" is the one with the highest step; "best" the one with
        the highest evaluation return (of equals, the later), None while none was evaluated.
        None if missing."""
        where = {"latest": "ORDER BY step DESC LIMIT 1",
                 "best": "AND eval_return_mean IS NOT NULL ORDER BY eval_return_mean DESC, step DESC LIMIT 1"}
        rows = self._read(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = ? "
                          + where.get(ckpt_id, "AND id = ?"), (job_id,) if ckpt_id in where else (job_id, ckpt_id))
        return CheckpointRow(*rows[0]) if rows else None

    # Sweeps

    def create_sweep(self, sweep_id: str, spec: dict[str, Any], *, idempotency_key: str | None = None,
                     request_hash: str | None = None) -> tuple[SweepRow, bool]:
        """Insert a PENDING sweep; returns (sweep, created). With an Idempotency-Key already in
        use, nothing is inserted and the sweep that holds the key comes back with created=False."""
        try:
            with self._write() as conn:
                conn.execute("INSERT INTO sweeps (id, created, status, spec, idempotency_key, request_hash)"
                             " VALUES (?, ?, ?, ?, ?, ?)", (sweep_id, time.time(), JobStatus.PENDING.value,
                                                            _dumps(spec), idempotency_key, request_hash))
        except sqlite3.IntegrityError:
            existing = self.sweep_by_idempotency_key(idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return existing, False
        return self.get_sweep(sweep_id), True

    def get_sweep(self, sweep_id: str) -> SweepRow | None:
        """The sweep, or None."""
        rows = self._read("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
        return _sweep(rows[0]) if rows else None

    def sweep_by_idempotency_key(self, key: str) -> SweepRow | None:
        """The sweep submitted with this Idempotency-Key, or None."""
        rows = self._read("SELECT * FROM sweeps WHERE idempotency_key = ?", (key,))
        return _sweep(rows[0]) if rows else None

    def list_sweeps(self, limit: int = 50) -> list[SweepRow]:
        """Sweeps, newest first."""
        return [_sweep(r) for r in self._read("SELECT * FROM sweeps ORDER BY created DESC, id DESC LIMIT ?",
                                              (limit,))]

    def unfinished_sweeps(self) -> list[SweepRow]:
        """PENDING and RUNNING sweeps, oldest first."""
        return [_sweep(r) for r in self._read(f"SELECT * FROM sweeps WHERE status IN {_UNFINISHED}"
                                              " ORDER BY created, id")]

    def mark_sweep_running(self, sweep_id: str, note: str | None = None) -> bool:
        """PENDING -> RUNNING; False if it is not PENDING."""
        with self._write() as conn:
            cur = conn.execute("UPDATE sweeps SET status = 'RUNNING', started = ?, reason = ?"
                               " WHERE id = ? AND status = 'PENDING'", (time.time(), note, sweep_id))
        return cur.rowcount == 1

    def finish_sweep(self, sweep_id: str, status: str, reason: str) -> bool:
        """Move an unfinished sweep to a terminal state with its reason; False if already terminal."""
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a terminal state")
        with self._write() as conn:
            cur = conn.execute(f"UPDATE sweeps SET status = ?, ended = ?, reason = ? WHERE id = ?"
                               f" AND status IN {_UNFINISHED}", (status, time.time(), reason, sweep_id))
        return cur.rowcount == 1

    def request_sweep_stop(self, sweep_id: str) -> bool:
        """Record that a stop of the sweep was asked for; False if it already ended."""
        with self._write() as conn:
            cur = conn.execute(f"UPDATE sweeps SET stop_requested = 1 WHERE id = ? AND status IN {_UNFINISHED}",
                               (sweep_id,))
        return cur.rowcount == 1

    def add_trial_error(self, sweep_id: str, trial_id: str, message: str) -> None:
        """Record why one of the sweep's trials errored."""
        with self._write() as conn:
            row = conn.execute("SELECT trial_errors FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
            if row is not None:
                errors = {**json.loads(row[0]), trial_id: message}
                conn.execute("UPDATE sweeps SET trial_errors = ? WHERE id = ?", (_dumps(errors), sweep_id))

    def sweep_jobs(self, sweep_id: str) -> list[JobRow]:
        """The sweep's trial jobs, oldest first."""
        return [_job(r) for r in self._read("SELECT * FROM jobs WHERE sweep_id = ? ORDER BY created, id",
                                            (sweep_id,))]

    def best_metrics(self, sweep_id: str, metric: str, mode: str) -> dict[str, tuple[float, int]]:
        """For each trial job of the sweep that has recorded `metric`: (its best value, the step
        of the row that has it; the first such row), by job id. `mode` is "max" or "min"."""
        order = "DESC" if mode == "max" else "ASC"
        rows = self._read(
            "SELECT job_id, value, step FROM (SELECT m.job_id, json_extract(m.row, ?) AS value, m.step,"
            f" ROW_NUMBER() OVER (PARTITION BY m.job_id ORDER BY json_extract(m.row, ?) {order}, m.step)"
            " AS rank FROM metrics m JOIN jobs j ON j.id = m.job_id"
            " WHERE j.sweep_id = ? AND json_type(m.row, ?) IN ('integer', 'real')) WHERE rank = 1",
            (f"$.{metric}", f"$.{metric}", sweep_id, f"$.{metric}"))
        return {r[0]: (float(r[1]), int(r[2])) for r in rows}
