"""`JobProcess`: an API job's training driver in a child process of the server.

The HTTP server and a driver loop in one process share a GIL. Under load every request then
delays the loop's next Ray call (`python -m bench.load` measures how much; docs/failures.md).
So each job's `Trainer.run()` runs in its own process, forked from a fork server that has the
trainer's modules imported. The child joins the server's Ray cluster and sends every sink call
down a pipe, in order, from a sender thread (the training loop only queues them, so a server
slow to read never holds it up). The server replays them into the job's `StoreSink`, so the
server stays the only writer of the job store.

"stop" goes the other way, down a second pipe. When the server dies, the child sees that pipe
close and exits at once. Its actors die with it (Ray ties them to their driver), and the
restarted server resumes the job from its last checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any

from service.run.sinks import CheckpointInfo, TrainingSink

log = logging.getLogger(__name__)

ORPHANED_EXIT_CODE = 3
"""The child's exit code when the server went away under it."""


@dataclass(frozen=True)
class DriverRequest:
    """What the child needs to run one job (picklable; no handles)."""

    job_id: str
    spec: dict[str, Any]
    """The job's JobSpec as JSON."""
    location: str
    """The job's run directory: a path or a storage URI."""
    resume_location: str | None
    """The checkpoint archive to start from, if any."""
    resume_name: str | None
    """That archive as the job store records it (relative to the data dir), for messages."""
    resource_timeout_s: float
    ray_address: str
    """The cluster the server is on (its GCS address, for an embedded Ray)."""


class DriverFailed(RuntimeError):
    """The job's driver ended with an error; `error_type` is the name of the child's exception."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class _PipeSink:
    """The child's sink: every call goes to the server as ("sink", method, args)."""

    def __init__(self, send) -> None:
        self._send = send

    def event(self, kind: str, message: str) -> None:
        """Forward the event."""
        self._send(("sink", "event", (kind, message)))

    def metrics(self, row: dict[str, Any]) -> None:
        """Forward the row."""
        self._send(("sink", "metrics", (row,)))

    def checkpoint(self, info: CheckpointInfo) -> None:
        """Forward the record of a written archive."""
        self._send(("sink", "checkpoint", (info,)))

    def rewind(self, step: int) -> None:
        """Forward the rewind."""
        self._send(("sink", "rewind", (step,)))


def _context() -> multiprocessing.context.BaseContext:
    """Where drivers come from: a fork server that has imported the trainer (torch, Ray,
    gymnasium) once, so a job's driver starts in a fork instead of importing them again. Nothing in
    the fork server joins Ray or starts threads; each driver joins Ray after the fork."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "service.run.loop"])
    return ctx


class JobProcess:
    """The server's handle on one job's driver process: start, `request_stop`, `run`.

    Made with a request, the driver starts on that job at once. Made with none, it is a
    *spare*: it joins Ray at `ray_address` and starts `warm_workers` warm rollout workers and a
    warm learner (`service.run.warm`), then waits for `assign` to give it its one job.
    """

    def __init__(self, request: DriverRequest | None, ray_address: str | None = None,
                 warm_workers: int = 0) -> None:
        ctx = _context()
        self._events, events_out = ctx.Pipe(duplex=False)
        control_in, self._control = ctx.Pipe(duplex=False)
        self._lock = threading.Lock()
        name = f"a2c-job-{request.job_id}" if request else "a2c-spare-driver"
        self.process = ctx.Process(target=_child_main, args=(request, events_out, control_in, ray_address,
                                                             warm_workers), name=name, daemon=True)
        self.process.start()
        events_out.close()  # the child's ends: EOF on ours once the child is gone
        control_in.close()

    warm: str | None = None
    """A spare's report on its warm actors, once read by `warm_state`."""
    assigned = False

    def warm_state(self) -> str:
        """Whether a spare's warm actors are up: its report, or "warming" (never waits; once
        the spare has its job, `run` reads its pipe and this reports what it knew)."""
        with self._lock:
            if self.warm is None and not self.assigned and self.process.is_alive() and self._events.poll():
                message = self._events.recv()
                self.warm = message[1] if message[0] == "warm" else f"unexpected report {message[0]}"
        return self.warm or ("warming" if self.process.is_alive() else "exited")

    def assign(self, request: DriverRequest) -> bool:
        """Give a spare its job; False when the spare is gone (then start the job another way)."""
        with self._lock:
            if not self.process.is_alive():
                return False
            try:
                self._control.send(("job", request))
            except OSError:
                return False
            self.assigned = True
        return True

    def abandon(self) -> None:
        """Close the control pipe: the driver exits at once, wherever it is (the server is going
        away without waiting for it; the job resumes from its last checkpoint)."""
        with self._lock:
            self._control.close()

    def request_stop(self) -> None:
        """Ask the driver to stop after its current update (it writes a final checkpoint)."""
        with self._lock:
            try:
                self._control.send("stop")
            except OSError:  # the child already exited; run() reports how
                pass

    def run(self, sink: TrainingSink) -> tuple[dict[str, Any], CheckpointInfo | None]:
        """Replay the child's sink calls into `sink` until it ends; returns (summary, last checkpoint).

        Raises DriverFailed with the child's error, or when it died without saying why.
        """
        try:
            while True:
                try:
                    message = self._events.recv()
                except EOFError:
                    self.process.join(10)
                    how = (f"exited with code {self.process.exitcode}" if self.process.exitcode is not None
                           else "closed its pipe and did not exit")
                    raise DriverFailed("DriverDied", f"the job's driver process {how} before it "
                                       "reported an outcome") from None
                kind = message[0]
                if kind == "sink":
                    getattr(sink, message[1])(*message[2])
                elif kind == "warm":  # a spare's actors are up (or could not start: cold, then)
                    log.info("spare driver: %s", message[1])
                elif kind == "done":
                    return message[1], message[2]
                else:
                    raise DriverFailed(message[1], message[2])
        finally:
            self._events.close()
            with self._lock:
                self._control.close()
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(10)


def _child_main(request: DriverRequest | None, events, control, ray_address: str | None = None,
                warm_workers: int = 0) -> None:
    """The child: join Ray, run the trainer, report its outcome; exit if the server goes away.

    A spare (no `request`) joins Ray and starts its warm actors first, then waits for its job.
    Signals sent to the server's whole process group (Ctrl-C, a service manager's SIGTERM) are
    ignored here: the server stops its jobs itself, through the control pipe, so that each
    writes a final checkpoint and is requeued instead of dying mid-update.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tag = f"job-{request.job_id}" if request else "spare"
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s {tag} %(name)s: %(message)s")
    stop = threading.Event()
    assigned: queue.SimpleQueue = queue.SimpleQueue()
    holder: dict[str, Any] = {}
    # The training loop only pickles each message (a snapshot: the caller may reuse its objects)
    # onto a queue; one thread writes them to the pipe, in order. A server that is slow to read
    # (busy with requests) then fills the queue, not the loop's time.
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def send(message: tuple) -> None:
        outbox.put(ForkingPickler.dumps(message))

    def sender() -> None:
        while (data := outbox.get()) is not None:
            events.send_bytes(data)  # what Connection.send does after pickling; recv() reads it

    sending = threading.Thread(target=sender, name="sender", daemon=True)
    sending.start()

    def watch_control() -> None:
        while True:
            try:
                message = control.recv()
            except (EOFError, OSError):
                # The server is gone: nobody records this job's progress any more. Its next
                # start resumes the job from the last checkpoint it recorded.
                os._exit(ORPHANED_EXIT_CODE)
            if message == "stop":
                stop.set()
                if "trainer" in holder:
                    holder["trainer"].request_stop()
            elif message[0] == "job":
                assigned.put(message[1])

    threading.Thread(target=watch_control, name="control", daemon=True).start()
    try:
        from learner.checkpoint import CheckpointRejected
        from service import storage
        from service.cluster import connect
        from service.run.checkpoints import read_checkpoint
        from service.run.loop import Trainer
        from service.run.spec import JobSpec
        from service.run.warm import WarmActors

        warm = None
        if request is None:  # a spare: warm up, then wait for the job
            connect(ray_address)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ray.init installed one that exits
            try:
                warm = WarmActors.start(warm_workers)
                send(("warm", f"{warm_workers} rollout workers and a learner ready"))
            except Exception as exc:  # noqa: BLE001 - the job then starts its actors itself
                send(("warm", f"warm actors could not start ({type(exc).__name__}: {exc}); the job starts cold"))
            request = assigned.get()
        resume = None
        if request.resume_location:  # first: a bad archive fails the job before any actor starts
            try:
                resume = read_checkpoint(request.resume_location)
            except (CheckpointRejected, OSError, storage.StorageUnavailable) as exc:
                raise CheckpointRejected(f"cannot resume from {request.resume_name}: {exc}") from None
        connect(request.ray_address)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ray.init installed one that exits
        trainer = Trainer(JobSpec.model_validate(request.spec), request.location, _PipeSink(send),
                          job_id=request.job_id, resume=resume, resource_timeout_s=request.resource_timeout_s,
                          warm=warm)
        holder["trainer"] = trainer
        if stop.is_set():
            trainer.request_stop()
        summary = trainer.run()
        send(("done", summary, trainer.last_checkpoint))
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the server with its reason
        send(("failed", type(exc).__name__, str(exc) or type(exc).__name__))
    finally:
        outbox.put(None)
        sending.join()  # everything queued reaches the server before the pipe closes
        events.close()
