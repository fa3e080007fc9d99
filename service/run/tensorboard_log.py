"""`TensorBoardLog`: a job's metrics rows as a TensorBoard event file, in the run's own directory
`<root>/tensorboard/<env>-[<name>-]<job id>/` (`tensorboard_dir`).

Each row becomes one event at `step` holding one scalar per numeric metrics key, under the key's
own name (`episode_return_mean`, `policy_loss`, ...), so `tensorboard --logdir <root>/tensorboard`
lists each job as a run named after its env, name and id (`service.run.tracking.run_name`) with
the same series as `GET /jobs/{id}/metrics`. The root is the server's data dir, or for
`a2c train` its runs' storage base (`runs` by default) or its `--out` directory.

On a local path the file is opened, appended to and closed for every row: nothing to close when
a job ends or its server dies, no writer thread, and every row is in the file once `write`
returns. An object store cannot append: there the records are kept in memory and the whole
object is rewritten at `flush()` (at each checkpoint), as `storage.JsonLines` does. The record
framing is TFRecord's; the protocol buffers and the checksum are tensorboardX's, imported when
the first log is made: tensorboardX's package imports torch whenever it is installed (about 1.1 s), which
`a2c serve` does not need before a job is submitted.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import struct
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from service import storage
from service.run.tracking import flatten_spec, metric_values, run_name

if TYPE_CHECKING:
    from tensorboardX.proto.event_pb2 import Event


_opened = itertools.count()

HPARAMS_METRICS = ("episode_return_mean", "eval_return_mean")
"""The metrics the HParams tab sets against each run's hyperparameters."""
HPARAMS_LEFT_OUT = {"tuned", "env_kwargs", "tracking"}
"""Spec keys that are not hyperparameters (`tuned` is a list of field names, `tracking` says where
the run is logged)."""


def tensorboard_dir(root: str | os.PathLike, spec: dict[str, Any], job_id: str) -> str:
    """Where a job's event files go: `<root>/tensorboard/<run name>`, a path or a storage URI."""
    return storage.join(root, "tensorboard", run_name(spec["env"], spec.get("name"), job_id))


@functools.cache
def _tbx() -> SimpleNamespace:
    """tensorboardX's `Event`, `Summary` and `masked_crc32c`, imported on first use."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary
    from tensorboardX.record_writer import masked_crc32c
    return SimpleNamespace(Event=Event, Summary=Summary, masked_crc32c=masked_crc32c)


def _record(data: bytes) -> bytes:
    """One TFRecord: length, its checksum, the data, its checksum."""
    crc = _tbx().masked_crc32c
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", crc(header)) + data + struct.pack("<I", crc(data))


class TensorBoardLog:
    """Appends metrics rows to a new event file under `log_dir`, a path or a storage URI (one file
    per log, as TensorBoard expects: a resumed job adds a file next to the earlier ones and the
    series continue)."""

    def __init__(self, log_dir: str | os.PathLike, hparams: dict[str, Any] | None = None) -> None:
        log_dir = os.fspath(log_dir)
        # TensorBoard's naming. Readers take a directory's files in name order, so names sort by
        # creation: seconds, then a per-process counter for logs opened in the same second.
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                f".{os.getpid()}.{next(_opened):06d}")
        self.location = storage.join(log_dir, name)
        self._buffer: list[bytes] | None = None
        if storage.is_local(log_dir):
            storage.local_path(log_dir).mkdir(parents=True, exist_ok=True)
        else:
            self._buffer = []
        self._append(_tbx().Event(wall_time=time.time(), file_version="brain.Event:2"))
        if hparams:
            self.write_hparams(hparams)

    def write_hparams(self, spec: dict[str, Any]) -> None:
        """The run's hyperparameters (a job spec, flattened to dotted keys such as
        `a2c.learning_rate`) for TensorBoard's HParams tab, against the return metrics."""
        from tensorboardX.summary import hparams as hparams_summaries
        flat = {key: value for key, value in flatten_spec(spec).items() if key not in HPARAMS_LEFT_OUT}
        for summary in hparams_summaries(flat, {key: 0.0 for key in HPARAMS_METRICS}):
            self._append(_tbx().Event(wall_time=time.time(), summary=summary))

    def write(self, row: dict[str, Any]) -> None:
        """One event at `row["step"]`: a scalar per finite number in the row (step aside)."""
        Event, Summary = _tbx().Event, _tbx().Summary
        values = [Summary.Value(tag=key, simple_value=value) for key, value in metric_values(row).items()]
        self._append(Event(wall_time=time.time(), step=int(row["step"]), summary=Summary(value=values)))

    def flush(self) -> None:
        """Make every event so far visible in storage (a no-op on a local path)."""
        if self._buffer is not None:
            storage.write_bytes_atomic(self.location, b"".join(self._buffer))

    def _append(self, event: Event) -> None:
        record = _record(event.SerializeToString())
        if self._buffer is not None:
            self._buffer.append(record)
            return
        with open(storage.local_path(self.location), "ab") as f:
            f.write(record)
