"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow, as a job's `tracking` asks.

Each tracker gets the job's effective spec as its config, every metrics row, and every checkpoint
archive as an artifact. It is configured by its own environment variables (`WANDB_PROJECT`,
`WANDB_ENTITY`, `WANDB_MODE`, `WANDB_API_KEY`, `WANDB_DIR`; `MLFLOW_TRACKING_URI`,
`MLFLOW_EXPERIMENT_NAME`, ...) in the process that records the job: the `a2c train` process,
or the API server for its jobs. `Tracking` feeds each tracker on a thread of its own, so a slow
or unreachable tracker never holds up training; one that fails is reported once, as a
`tracking_failed` event, and dropped for the rest of the run. Their packages are optional
(`pip install 'a2c-service[wandb]'`, `[mlflow]`) and imported on that thread, not at start-up.
See docs/monitoring.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import queue
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from service import storage
from service.run.sinks import CheckpointInfo

TRACKERS = {"wandb": "W&B", "mlflow": "MLflow"}
"""The trackers a job may ask for, by the name in `JobSpec.tracking` (also the pip extra's and the
package's import name), with the name users know them by."""
DEFAULT_PROJECT = "a2c-service"
"""The W&B project and MLflow experiment when WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME are unset."""
CLOSE_TIMEOUT_S = 120.0
"""How long the end of a job waits for its trackers to take their last records and finish."""
MAX_BEHIND = 10_000
"""Records a tracker may lag behind training before metrics rows are dropped for it."""
PARAMS_LEFT_OUT = {"tracking"}
"""Spec keys not logged as MLflow params (they say where the run is logged, not how it trains)."""


def run_name(env: str, name: str | None, job_id: str) -> str:
    """How TensorBoard, W&B and MLflow name a job's run: `<env>-<job id>`, or `<env>-<name>-<job id>`
    for a named job (the id keeps two runs of one name apart); characters other than letters,
    digits and `.+=-` (the `/` of `ALE/Pong-v5`, spaces) become `-`."""
    text = "-".join(part for part in (env, name, job_id) if part)
    return re.sub(r"[^\w.+=-]+", "-", text)


def tracker_problem(tracker: str) -> str | None:
    """Why `tracker` cannot run in this process, with the fix; None when it can. Asks only whether
    its package is there (no import)."""
    if importlib.util.find_spec(tracker) is None:
        return f"{tracker} is not installed here: pip install 'a2c-service[{tracker}]'"
    if tracker == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
        return ("mlflow needs MLFLOW_TRACKING_URI in the environment of the process that records the job "
                "(a2c train, or a2c serve): a tracking server such as http://127.0.0.1:5000, or a "
                "directory as file:/path/mlruns (with MLFLOW_ALLOW_FILE_STORE=true)")
    return None


def metric_values(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row's finite numbers (bools, None, NaN and inf left out), `step` aside."""
    return {key: float(value) for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def flatten_spec(value: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested spec as {dotted key: scalar}; lists become comma-joined text, None "none"."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten_spec(item, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    if isinstance(value, (list, tuple)):
        return {key: ",".join(map(str, value))}
    if value is None:
        return {key: "none"}
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)}


class WandbTracker:
    """One job's W&B run: the spec as its config, rows against `step`, archives as versions of the
    `model-<job id>` artifact (aliased by checkpoint id). The run's id is the job id, so a job
    resumed after a server restart continues its run."""

    def __init__(self, spec: dict[str, Any], job_id: str, name: str, root: str | None) -> None:
        self.spec, self.job_id, self.name, self.root = spec, job_id, name, root
        self.run: Any = None

    def start(self) -> str:
        """Open the run; returns what to tell the user about it."""
        import wandb
        # W&B's files go to WANDB_DIR, else under the root (the data dir, the runs' directory),
        # not into whatever the working directory is. Read here, not left to wandb: it keeps the
        # environment it saw first for the life of the process.
        directory = os.environ.get("WANDB_DIR")
        if not directory and self.root is not None and storage.is_local(self.root):
            directory = str(storage.local_path(self.root))
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, name=self.name, id=self.job_id,
            resume="allow", config=self.spec, tags=list(self.spec.get("tags") or ()), job_type="train",
            dir=directory or None, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        where = (f"offline in {Path(self.run.dir).parent} (upload it with `wandb sync`)" if self.run.offline
                 else self.run.url)
        return f"W&B run {self.name}: {where}"

    def metrics(self, row: dict[str, Any]) -> None:
        """Log one row at its env step."""
        self.run.log({"step": row["step"], **metric_values(row)})

    def checkpoint(self, info: CheckpointInfo, path: str) -> None:
        """Log the archive at `path` as the next version of the job's model artifact."""
        import wandb
        artifact = wandb.Artifact(f"model-{self.job_id}", type="model", metadata={
            "step": info.step, "return_mean": info.return_mean, "eval_return_mean": info.eval_return_mean})
        artifact.add_file(path, name=f"{info.id}.tar.gz")
        self.run.log_artifact(artifact, aliases=["latest", info.id])

    def finish(self, status: str) -> None:
        """Close the run (failed for a FAILED job), its job status in the summary."""
        self.run.summary["status"] = status
        self.run.finish(exit_code=1 if status == "FAILED" else 0)


class MlflowTracker:
    """One job's MLflow run, through `MlflowClient` (no process-wide active run, so a server's
    jobs log side by side): the spec as params (dotted keys) and as `config.json`, rows as metrics
    at their env step, archives under `checkpoints/`. The run is tagged `a2c.job_id`, so a job
    resumed after a server restart continues its run."""

    def __init__(self, spec: dict[str, Any], job_id: str, name: str, root: str | None) -> None:
        self.spec, self.job_id, self.name = spec, job_id, name
        self.client: Any = None
        self.run_id = ""

    def _experiment_id(self) -> str:
        given = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if given:
            return given
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another job created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self) -> str:
        """Open the run (or reopen the job's earlier one); returns what to tell the user about it."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient()
        experiment = self._experiment_id()
        earlier = self.client.search_runs([experiment], filter_string=f"tags.`a2c.job_id` = '{self.job_id}'",
                                          max_results=1)
        if earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"a2c.job_id": self.job_id, "a2c.env": self.spec["env"],
                    "a2c.tags": ",".join(self.spec.get("tags") or ())}
            self.run_id = self.client.create_run(experiment, run_name=self.name, tags=tags).info.run_id
            params = [Param(key, str(value)[:6000]) for key, value in flatten_spec(self.spec).items()
                      if key.split(".")[0] not in PARAMS_LEFT_OUT]
            for first in range(0, len(params), 100):  # MLflow's limit per batch
                self.client.log_batch(self.run_id, params=params[first:first + 100])
            self.client.log_dict(self.run_id, self.spec, "config.json")
        return f"MLflow run {self.name} ({self.run_id}) in experiment {experiment} at {self.client.tracking_uri}"

    def metrics(self, row: dict[str, Any]) -> None:
        """Log one row's numbers at its env step."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, int(row["step"]))
                                                    for key, value in metric_values(row).items()])

    def checkpoint(self, info: CheckpointInfo, path: str) -> None:
        """Log the archive at `path` as `checkpoints/<checkpoint id>.tar.gz`."""
        self.client.log_artifact(self.run_id, path, "checkpoints")

    def finish(self, status: str) -> None:
        """End the run: FINISHED for SUCCEEDED, FAILED, else KILLED (stopped, or paused to resume)."""
        self.client.set_tag(self.run_id, "a2c.status", status)
        self.client.set_terminated(self.run_id, {"SUCCEEDED": "FINISHED", "FAILED": "FAILED"}.get(status, "KILLED"))


TRACKER_CLASSES: dict[str, type] = {"wandb": WandbTracker, "mlflow": MlflowTracker}


@contextlib.contextmanager
def _local_file(location: str, name: str) -> Iterator[str]:
    """A local path holding the archive at `location`: itself, or a temporary copy from an object store."""
    if storage.is_local(location):
        yield str(storage.local_path(location))
        return
    with tempfile.TemporaryDirectory(prefix="a2c-artifact-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(storage.read_bytes(location))
        yield str(path)


class _Feed:
    """One tracker's calls, in order, on a thread of its own; notes for the user go to `notes`."""

    def __init__(self, title: str, tracker: Any, notes: queue.SimpleQueue) -> None:
        self.title, self.tracker, self.notes = title, tracker, notes
        self.calls: queue.Queue = queue.Queue(maxsize=MAX_BEHIND)
        self.failed = False
        self.dropping = False
        self.thread = threading.Thread(target=self._run, name=f"tracking-{title}", daemon=True)
        self.thread.start()

    def put(self, call: tuple) -> None:
        """Queue a call; a metrics row is dropped while the tracker is MAX_BEHIND calls behind."""
        if self.failed:
            return
        try:
            self.calls.put_nowait(call)
            self.dropping = False
        except queue.Full:
            if not self.dropping:
                self.dropping = True
                self.notes.put(("tracking_failed", f"{self.title} is {MAX_BEHIND} records behind: "
                                "dropping metrics rows until it catches up"))

    def close(self, status: str, deadline: float) -> bool:
        """Ask the tracker to finish and wait until `deadline` (monotonic); True if it ended."""
        with contextlib.suppress(queue.Full):
            self.calls.put(("finish", status), timeout=max(deadline - time.monotonic(), 0.01))
            self.calls.put(None, timeout=max(deadline - time.monotonic(), 0.01))
        self.thread.join(max(deadline - time.monotonic(), 0))
        return not self.thread.is_alive()

    def _run(self) -> None:
        call: tuple | None = ("start",)
        while call is not None:
            if not self.failed:
                try:
                    self._apply(call)
                except Exception as exc:  # noqa: BLE001 - a tracker's failure must not end training
                    self.failed = True
                    self.notes.put(("tracking_failed", f"{self.title} failed at {call[0]}: "
                                    f"{type(exc).__name__}: {exc}; training goes on without it"))
            call = self.calls.get()

    def _apply(self, call: tuple) -> None:
        method, *args = call
        if method == "start":
            self.notes.put(("tracking", self.tracker.start()))
        elif method == "checkpoint":
            info: CheckpointInfo = args[0]
            with _local_file(info.location, f"{info.id}.tar.gz") as path:
                self.tracker.checkpoint(info, path)
        else:
            getattr(self.tracker, method)(*args)


class Tracking:
    """The fan-out of one job's records to the trackers its spec names (`tracking`), each on its
    own thread. Sinks call `metrics` and `checkpoint` as they record, and `close` at the end;
    what the trackers have to say (a run's URL, a failure) goes to `report(kind, message)`,
    always on the caller's thread. With no trackers it does nothing."""

    def __init__(self, spec: dict[str, Any], job_id: str, root: str | None,
                 report: Callable[[str, str], None]) -> None:
        self.report = report
        self.notes: queue.SimpleQueue = queue.SimpleQueue()
        trackers = spec.get("tracking") or ()
        name = run_name(spec["env"], spec.get("name"), job_id) if trackers else ""
        self.feeds = [_Feed(TRACKERS[t], TRACKER_CLASSES[t](spec, job_id, name, root), self.notes)
                      for t in trackers]

    def _tell(self) -> None:
        while True:
            try:
                kind, message = self.notes.get_nowait()
            except queue.Empty:
                return
            self.report(kind, message)

    def metrics(self, row: dict[str, Any]) -> None:
        """Send a metrics row to every tracker."""
        self._tell()
        for feed in self.feeds:
            feed.put(("metrics", dict(row)))

    def checkpoint(self, info: CheckpointInfo) -> None:
        """Send a written archive to every tracker, as an artifact."""
        self._tell()
        for feed in self.feeds:
            feed.put(("checkpoint", info))

    def close(self, status: str, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Finish every tracker's run with the job's status, waiting up to `timeout` seconds in all."""
        deadline, status = time.monotonic() + timeout, str(status)
        late = [feed.title for feed in self.feeds if not feed.close(status, deadline)]
        self._tell()
        if late:
            self.report("tracking_failed", f"{', '.join(late)} had not finished {timeout:.0f}s after the "
                        "job ended; the last records may be missing there")
        self.feeds = []
