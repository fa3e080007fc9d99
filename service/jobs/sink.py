"""`StoreSink`: the trainer's sink for a server job: events, metrics rows and checkpoint
records go to the job store, metrics rows also to the job's TensorBoard file, and rows and
archives to the experiment trackers the job asks for (`service.run.tracking`)."""

from __future__ import annotations

from typing import Any, Callable

from service.run.sinks import CheckpointInfo
from service.run.tensorboard_log import TensorBoardLog, tensorboard_dir
from service.run.tracking import Tracking
from service.store import CheckpointRow, JobStore


class StoreSink:
    """Records one job's progress in the store (the server replays its driver's calls here)."""

    def __init__(self, store: JobStore, job_id: str, record: Callable[[str], str], spec: dict[str, Any],
                 tensorboard_root: str, data_dir: str) -> None:
        """`spec` is the job's spec (JSON); its TensorBoard file goes to `tensorboard/<run name>/`
        under `tensorboard_root` (a path or a storage URI) and, unless WANDB_DIR says otherwise,
        W&B's files under the server's `data_dir`."""
        self.store, self.job_id, self.record = store, job_id, record
        self.tensorboard = TensorBoardLog(tensorboard_dir(tensorboard_root, spec, job_id), spec)
        self.tracking = Tracking(spec, job_id, data_dir, self.event)

    def event(self, kind: str, message: str) -> None:
        """Record the event; "started" is when the job becomes RUNNING."""
        self.store.add_event(self.job_id, kind, message)
        if kind == "started":
            self.store.mark_running(self.job_id)

    def metrics(self, row: dict[str, Any]) -> None:
        """Record one metrics row (the store, then the job's TensorBoard log and trackers)."""
        self.store.append_metrics(self.job_id, row)
        self.tensorboard.write(row)
        self.tracking.metrics(row)

    def checkpoint(self, info: CheckpointInfo) -> None:
        """Record a written archive (by its location as `record` writes it down) and send it to the
        trackers; the TensorBoard log so far goes to storage with it."""
        self.store.add_checkpoint(self.job_id, CheckpointRow(
            info.id, info.step, info.return_mean, info.size_bytes, info.created, self.record(info.location),
            info.eval_return_mean))
        self.tensorboard.flush()
        self.tracking.checkpoint(info)

    def rewind(self, step: int) -> None:
        """Drop the rows past `step`: the restarted learner records those steps again."""
        dropped = self.store.rewind(self.job_id, step)
        if dropped:
            self.store.add_event(self.job_id, "metrics_rewound", f"{dropped} metrics row(s) after step "
                                 f"{step} dropped; the resumed run records them again")

    def close(self, status: str) -> None:
        """The job's driver is done (`status`: how the job ends, PENDING when it is requeued): the
        trackers finish their runs (waiting for them at most `tracking.CLOSE_TIMEOUT_S`)."""
        self.tracking.close(status)
