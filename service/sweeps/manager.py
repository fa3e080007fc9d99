"""`SweepManager`: runs hyperparameter sweeps on Ray Tune, in the server's Ray, each trial a job.

A sweep's `Tuner.fit()` runs in a thread of the API server (started from the manager's
launcher thread, so it keeps the normal CPU priority that request threads do not have). Its
trials are `service.sweeps.trial.follow_trial_job`: Ray actors with no CPU on the server's
node, which get their job through `POST /sweeps/{id}/trials` (`add_trial`: the base spec with
the trial's values, submitted to the `JobManager` with the sweep's id) and report its metric
rows to Tune. The jobs reserve their CPUs through the job service's admission policy like any
job, so a sweep respects the server's CPU and concurrency limits; it also runs at most
`A2C_MAX_CONCURRENT_JOBS - 1` trials at once (and no more than the cluster's CPUs hold), so a
job submitted meanwhile is queued ahead of the sweep's next trial and waits for one trial job
at most.

The sweep's Tune callback (`_TrialJobs`), in this process, stops a trial's job when Tune ends
the trial early (ASHA) or the sweep is stopped, with the reason in the job's events; a trial
that errors is recorded in the sweep and the sweep goes on. A sweep does not outlive its
server: shutting down stops it (its trial jobs end STOPPED with a final checkpoint), and a
sweep found RUNNING at start (the server died) is marked STOPPED with the reason, its
unfinished trial jobs stopped. See docs/sweeps.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.jobs.errors import IdempotencyKeyReused, JobFinished
from service.jobs.manager import JobManager
from service.records import JOB_ID_PATTERN, JobStatus, new_job_id
from service.run.spec import InvalidSpec
from service.store import CheckpointRow, JobRow, JobStore, SweepRow
from service.sweeps.spec import SweepSpec, build_sweep, trial_config, trial_spec, tune_space
from service.sweeps.trial import TrialApi, follow_trial_job

log = logging.getLogger(__name__)

SWEEP_ID_PATTERN = JOB_ID_PATTERN
"""Sweep ids look like job ids: 12 lowercase hex digits."""
TRIAL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Ray Tune's trial ids (e.g. `4c003_00001`)."""


class SweepNotFound(LookupError):
    """No sweep has this id."""

    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"no sweep with id {sweep_id!r}")


class SweepFinished(RuntimeError):
    """The sweep already ended (or is stopping), so it cannot be stopped or given trials."""

    def __init__(self, sweep_id: str, status: str) -> None:
        super().__init__(f"sweep {sweep_id} already finished: {status}")


@dataclass(frozen=True)
class TrialView:
    """One trial as `GET /sweeps/{id}` shows it: its job, its values, its best metric."""

    trial_id: str | None
    job: JobRow
    config: dict[str, Any]
    best: float | None
    best_step: int | None


@dataclass(frozen=True)
class SweepDetails:
    """A sweep with its trials, the best one, and the best trial's best checkpoint."""

    sweep: SweepRow
    trials: list[TrialView]
    best: TrialView | None
    best_checkpoint: CheckpointRow | None


def _trial_key(sweep_id: str, trial_id: str) -> str:
    """The Idempotency-Key of a trial's job: one job per trial, however often it is asked for."""
    return f"sweep-{sweep_id}-{trial_id}"


def _request_hash(raw: Any) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Running:
    """A sweep whose Tuner runs: its thread, and the event its Tune stopper reads."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reason: str | None = None
        """Why it was stopped: by request, or the server's shutdown."""
        self.thread: threading.Thread | None = None


class SweepManager:
    """Submits, runs, stops and recovers sweeps; reads them for the API.

    `api_url` and `api_token` are how trials reach this server's HTTP API (loopback);
    `results_dir` is where Ray Tune keeps each sweep's experiment state.
    """

    def __init__(self, store: JobStore, jobs: JobManager, results_dir: Path, api_url: str,
                 api_token: str | None = None, poll_s: float = 1.0) -> None:
        self.store, self.jobs = store, jobs
        self.results_dir = Path(results_dir).resolve()
        self.api_url, self.api_token, self.poll_s = api_url.rstrip("/"), api_token, poll_s
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._launch: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = False
        self._launcher: threading.Thread | None = None

    # Lifecycle

    def recover(self) -> None:
        """Mark sweeps the previous server left unfinished STOPPED, with the reason, and ask their
        unfinished trial jobs to stop (call before `JobManager.start`, whose recovery then ends
        them STOPPED instead of resuming them without their sweep)."""
        for sweep in self.store.unfinished_sweeps():
            unfinished = [j for j in self.store.sweep_jobs(sweep.id) if not j.finished]
            for job in unfinished:
                self.store.request_stop(job.id, f"its sweep {sweep.id} ended when the server restarted")
            done = len(self.store.sweep_jobs(sweep.id)) - len(unfinished)
            self.store.finish_sweep(sweep.id, JobStatus.STOPPED, (
                f"the server restarted while the sweep was {sweep.status}; its {done} finished trials "
                f"are kept and its {len(unfinished)} unfinished trial jobs were stopped (submit the "
                "sweep again to search further)"))

    def start(self) -> None:
        """Start the launcher thread (from a thread at normal CPU priority: sweeps' threads
        inherit it)."""
        self._launcher = threading.Thread(target=self._launch_loop, name="sweep-launcher", daemon=True)
        self._launcher.start()

    def _launch_loop(self) -> None:
        while (item := self._launch.get()) is not None:
            sweep, running = item
            running.thread = threading.Thread(target=self._run, args=(sweep, running),
                                              name=f"sweep-{sweep.id}", daemon=True)
            running.thread.start()

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop every sweep (the server is going away): its trial jobs are asked to stop with a
        final checkpoint, and the sweep ends STOPPED with the reason. Call before
        `JobManager.shutdown`."""
        with self._lock:
            self._closing = True
            running = dict(self._running)
        self._launch.put(None)
        why = "the server shut down"
        for sweep_id, run in running.items():
            self._stop_run(sweep_id, run, why)
        for sweep_id, run in running.items():
            if run.thread is not None:
                run.thread.join(grace_s)
            self._finish_jobs_and_sweep(sweep_id, why)

    def _finish_jobs_and_sweep(self, sweep_id: str, why: str) -> None:
        sweep = self.store.get_sweep(sweep_id)
        if sweep is not None and not sweep.finished:
            self.store.finish_sweep(sweep_id, JobStatus.STOPPED, f"{why}; {self._tally(sweep)}")

    # Submitting and stopping

    def submit(self, raw: Any, idempotency_key: str | None = None) -> tuple[SweepRow, bool]:
        """Validate a raw sweep and start it; returns (sweep, replayed), like `JobManager.submit`.
        Raises InvalidSpec naming the path at fault."""
        if not isinstance(raw, dict):
            raise InvalidSpec("body", "must be a JSON object: {base, space, num_samples, ...}")
        request_hash = _request_hash(raw)
        if idempotency_key is not None:
            earlier = self.store.sweep_by_idempotency_key(idempotency_key)
            if earlier is not None:
                if earlier.request_hash != request_hash:
                    raise IdempotencyKeyReused()
                return earlier, True
        try:
            import ray.tune  # noqa: F401 - the engine every sweep runs on
        except ImportError:
            raise InvalidSpec("body", "Ray Tune is not installed on the server: "
                              "pip install 'a2c-service[tune]'") from None
        spec = build_sweep(raw, self.jobs.check_spec)
        sweep, created = self.store.create_sweep(new_job_id(), spec.stored(),
                                                 idempotency_key=idempotency_key, request_hash=request_hash)
        if not created:
            if sweep.request_hash != request_hash:
                raise IdempotencyKeyReused()
            return sweep, True
        with self._lock:
            if self._closing:
                self.store.finish_sweep(sweep.id, JobStatus.STOPPED, "the server is shutting down")
                return self.get(sweep.id), False
            run = self._running[sweep.id] = _Running()
        self._launch.put((sweep, run))
        return sweep, False

    def stop(self, sweep_id: str) -> SweepRow:
        """Stop a sweep: no new trials, and every unfinished trial job stops with a final
        checkpoint; the sweep then ends STOPPED. Raises SweepFinished if it already ended."""
        sweep = self.get(sweep_id)
        if not self.store.request_sweep_stop(sweep_id):
            raise SweepFinished(sweep_id, sweep.status)
        with self._lock:
            run = self._running.get(sweep_id)
        why = "stopped by request (POST /sweeps/{id}/stop)".replace("{id}", sweep_id)
        if run is not None:
            self._stop_run(sweep_id, run, why)
        else:
            self._stop_jobs(sweep_id, why)
            self._finish_jobs_and_sweep(sweep_id, why)
        return self.get(sweep_id)

    def _stop_run(self, sweep_id: str, run: _Running, why: str) -> None:
        run.reason = run.reason or why
        run.stop.set()  # first: Tune starts no new trial (and add_trial refuses one)
        self._stop_jobs(sweep_id, why)

    def _stop_jobs(self, sweep_id: str, why: str) -> None:
        for job in self.store.sweep_jobs(sweep_id):
            if not job.finished:
                self._stop_job(job.id, f"its sweep {sweep_id} stopped: {why}")

    def _stop_job(self, job_id: str, reason: str) -> None:
        try:
            self.jobs.stop(job_id, reason)
        except JobFinished:
            pass

    def add_trial(self, sweep_id: str, trial_id: str, sampled: dict[str, Any]) -> tuple[JobRow, bool]:
        """The job of one trial, submitted on first call: the base spec with the values Tune
        sampled for it (`POST /sweeps/{id}/trials`, called by the trial). Returns (job, replayed)."""
        sweep = self.get(sweep_id)
        if not re.fullmatch(TRIAL_ID_PATTERN, trial_id):
            raise InvalidSpec("trial_id", f"must match {TRIAL_ID_PATTERN}")
        key = _trial_key(sweep_id, trial_id)
        earlier = self.store.job_by_idempotency_key(key)
        if earlier is not None:
            return earlier, True
        if sweep.finished or sweep.stop_requested:
            raise SweepFinished(sweep_id, "stopping" if not sweep.finished else sweep.status)
        spec = SweepSpec.model_validate(sweep.spec)
        if set(sampled) != set(spec.space):
            raise InvalidSpec("config", f"must give exactly the space's paths: {', '.join(spec.space)}")
        try:
            config = trial_config(spec, sampled)
        except (IndexError, TypeError, ValueError) as exc:
            raise InvalidSpec("config", f"not a sample of the sweep's space: {exc}") from None
        job, replayed = self.jobs.submit(trial_spec(spec.base, config), idempotency_key=key, sweep_id=sweep_id)
        if not replayed:
            self.store.add_event(job.id, "sweep", f"trial {trial_id} of sweep {sweep_id}: "
                                 + ", ".join(f"{k}={v!r}" for k, v in config.items()))
        return job, replayed

    # Running

    def _concurrency(self, spec: SweepSpec) -> tuple[int, str]:
        """How many trials run at once, and why when that is fewer than asked for."""
        limit = self.jobs.limits.max_concurrent_jobs
        want = spec.max_concurrent_trials
        caps = [(max(1, limit - 1), f"A2C_MAX_CONCURRENT_JOBS is {limit}; a sweep leaves one job slot to other jobs")]
        cpus = self.jobs.capacity()
        need = self.jobs.check_spec(spec.base).cpus_needed
        if cpus:
            caps.append((max(1, int(cpus // need)), f"the cluster's {cpus:g} CPUs hold {int(cpus // need)} "
                         f"trial jobs of {need} CPUs"))
        cap, why = min(caps)
        return (want, "") if want <= cap else (cap, why)

    def _run(self, sweep: SweepRow, run: _Running) -> None:
        """Run the sweep's Tuner to its end and record the outcome (the sweep's thread)."""
        try:
            spec = SweepSpec.model_validate(sweep.spec)
            concurrent, why = self._concurrency(spec)
            note = f"{spec.num_samples} trials, {concurrent} at a time" + (f" ({why})" if why else "")
            self.store.mark_sweep_running(sweep.id, note)
            _LIVE[sweep.id] = (self, spec, run)
            grid = self._fit(sweep.id, spec, concurrent, run)
            errors = [r for r in grid if r.error is not None]
            self._await_jobs(sweep.id)
            current = self.get(sweep.id)
            if run.stop.is_set():
                self.store.finish_sweep(sweep.id, JobStatus.STOPPED, f"{run.reason}; {self._tally(current)}")
            elif len(errors) == len(grid):
                self.store.finish_sweep(sweep.id, JobStatus.FAILED, f"every trial failed; the first: {errors[0].error}"
                                        if errors else "no trial ran")
            else:
                self.store.finish_sweep(sweep.id, JobStatus.SUCCEEDED, self._tally(current))
        except Exception as exc:  # noqa: BLE001 - the sweep ends FAILED with the reason, its jobs stopped
            log.exception("sweep %s failed", sweep.id)
            self._stop_jobs(sweep.id, "the sweep failed")
            self.store.finish_sweep(sweep.id, JobStatus.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            _LIVE.pop(sweep.id, None)
            with self._lock:
                self._running.pop(sweep.id, None)

    def _await_jobs(self, sweep_id: str, timeout_s: float = 120.0) -> None:
        """Wait until the sweep's trial jobs have ended (those Tune ended early were asked to
        stop, which takes an update and a checkpoint), so that an ended sweep has ended jobs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(not j.finished for j in self.store.sweep_jobs(sweep_id)):
            time.sleep(0.5)

    def _fit(self, sweep_id: str, spec: SweepSpec, concurrent: int, run: _Running):
        """Ray Tune's Tuner for the sweep, run to its end; returns its ResultGrid."""
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search import BasicVariantGenerator

        if spec.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch
            search, limit = OptunaSearch(seed=spec.seed), concurrent  # Tune wraps it in a ConcurrencyLimiter
        else:  # random: the generator limits its own concurrency
            search, limit = BasicVariantGenerator(random_state=spec.seed, max_concurrent=concurrent), None
        total = self.jobs.check_spec(spec.base).total_steps
        scheduler = (ASHAScheduler(time_attr="step", max_t=total, grace_period=spec.grace_steps,
                                   reduction_factor=spec.asha.reduction_factor)
                     if spec.scheduler == "asha" else FIFOScheduler())
        api = TrialApi(self.api_url, self.api_token, sweep_id=sweep_id, metric=spec.metric, poll_s=self.poll_s)
        # No CPU: the trial's job reserves its CPUs through the job service. On this node: the
        # trial calls the API on loopback.
        here = {"CPU": 0, f"node:{ray.util.get_node_ip_address()}": 0.001}
        trainable = tune.with_resources(tune.with_parameters(follow_trial_job, api=api),
                                        tune.PlacementGroupFactory([here]))
        stopper, callback = _tune_hooks(sweep_id)
        # Tune's newer console output prints an experiment table and paths even at verbose=0,
        # onto the stdout of `a2c sweep`, whose stdout is its summary JSON; the older reporter
        # (RAY_AIR_NEW_OUTPUT=0) prints nothing at verbose=0. Progress is in the API instead.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        tuner = tune.Tuner(
            trainable, param_space=tune_space(spec),
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                                        max_concurrent_trials=limit, search_alg=search,
                                        scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(name=sweep_id, storage_path=str(self.results_dir), verbose=0,
                                      stop=stopper, callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=0)))
        return tuner.fit()

    def trial_ended(self, sweep_id: str, spec: SweepSpec, run: _Running, trial: Any, error: str | None) -> None:
        """Tune ended a trial: stop its job if it still runs, with the reason; record an error."""
        job = self.store.job_by_idempotency_key(_trial_key(sweep_id, trial.trial_id))
        if error is not None:
            self.store.add_trial_error(sweep_id, trial.trial_id, error)
        if job is None or job.finished:
            return
        result = trial.last_result or {}
        step = result.get("step")
        if error is None and not run.stop.is_set() and isinstance(step, int) and step >= job.spec["total_steps"]:
            return  # Tune ends a trial at its budget (ASHA's max_t): the job is ending by itself
        if run.stop.is_set():
            reason = f"its sweep {sweep_id} stopped: {run.reason}"
        elif error is not None:
            reason = f"its trial {trial.trial_id} of sweep {sweep_id} failed: {error}"
        elif spec.scheduler == "asha":
            value = result.get(spec.metric)
            rung = spec.grace_steps
            while isinstance(step, int) and rung * spec.asha.reduction_factor <= step:
                rung *= spec.asha.reduction_factor
            reason = (f"stopped by sweep {sweep_id}'s ASHA scheduler at its {rung}-step rung: {spec.metric} "
                      f"{value:.4g} at step {step} was not in the best 1/{spec.asha.reduction_factor} of "
                      "the trials there" if isinstance(value, (int, float)) else
                      f"stopped by sweep {sweep_id}'s ASHA scheduler")
        else:
            reason = f"its Tune trial {trial.trial_id} of sweep {sweep_id} ended"
        self._stop_job(job.id, reason)

    # Reading

    def get(self, sweep_id: str) -> SweepRow:
        """The sweep; raises SweepNotFound."""
        sweep = self.store.get_sweep(sweep_id) if re.fullmatch(SWEEP_ID_PATTERN, sweep_id) else None
        if sweep is None:
            raise SweepNotFound(sweep_id)
        return sweep

    def list(self, limit: int = 50) -> list[SweepRow]:
        """Sweeps, newest first."""
        return self.store.list_sweeps(limit)

    def describe(self, sweep_id: str) -> SweepDetails:
        """The sweep, its trials with their values and best metric, and the best trial."""
        sweep = self.get(sweep_id)
        spec = SweepSpec.model_validate(sweep.spec)
        best = self.store.best_metrics(sweep_id, spec.metric, spec.mode)
        prefix = f"sweep-{sweep_id}-"
        trials = []
        for job in self.store.sweep_jobs(sweep_id):
            value, step = best.get(job.id, (None, None))
            trials.append(TrialView(
                trial_id=job.idempotency_key.removeprefix(prefix) if job.idempotency_key else None, job=job,
                config={path: _value_at(job.spec, path) for path in spec.space}, best=value, best_step=step))
        ranked = [t for t in trials if t.best is not None]
        top = (max if spec.mode == "max" else min)(ranked, key=lambda t: t.best) if ranked else None
        return SweepDetails(sweep, trials, top, self._best_checkpoint(top.job.id) if top else None)

    def _best_checkpoint(self, job_id: str) -> CheckpointRow | None:
        """The job's `best` checkpoint (highest evaluation return); before any evaluation, the
        one with the highest training return, else the latest."""
        best = self.store.checkpoint(job_id, "best")
        if best is not None:
            return best
        checkpoints = self.store.checkpoints(job_id)
        scored = [c for c in checkpoints if c.return_mean is not None]
        return max(scored, key=lambda c: (c.return_mean, c.step)) if scored else (
            checkpoints[-1] if checkpoints else None)

    def _tally(self, sweep: SweepRow) -> str:
        """What the sweep's trials came to, in words."""
        jobs = self.store.sweep_jobs(sweep.id)
        counts = {s: sum(1 for j in jobs if j.status == s) for s in JobStatus}
        parts = [f"{n} {s.value}" for s, n in counts.items() if n]
        errors = len(sweep.trial_errors)
        return (f"{len(jobs)} trial jobs" + (f" ({', '.join(parts)})" if parts else "")
                + (f"; {errors} trials errored" if errors else ""))


def _value_at(spec: dict[str, Any], path: str) -> Any:
    value: Any = spec
    for name in path.split("."):
        value = value.get(name) if isinstance(value, dict) else None
    return value


_LIVE: dict[str, tuple[SweepManager, SweepSpec, _Running]] = {}
"""The sweeps whose Tuner runs in this process, by id: what their Tune hooks act on. Tune
pickles its stopper and callbacks into the experiment's state, so they hold only the id."""


def _live(sweep_id: str) -> tuple[SweepManager, SweepSpec, _Running] | None:
    """What the hooks of sweep `sweep_id` act on, if it runs here (an importable function:
    cloudpickle keeps a reference to it, not a copy of `_LIVE`)."""
    return _LIVE.get(sweep_id)


def _tune_hooks(sweep_id: str):
    """The sweep's Tune stopper and callback (made here: `ray.tune` is imported when a sweep runs)."""
    from ray import tune

    class SweepStopper(tune.Stopper):
        """Ends the whole experiment once the sweep is stopped; never a single trial."""

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            live = _live(sweep_id)
            return live is None or live[2].stop.is_set()

    class TrialJobs(tune.Callback):
        """When Tune ends a trial, its job follows (see `SweepManager.trial_ended`)."""

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            """The trial ended: its job finished, ASHA stopped it, or the sweep was stopped."""
            if (live := _live(sweep_id)) is not None:
                live[0].trial_ended(sweep_id, live[1], live[2], trial, None)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            """The trial raised: its job failed, or it got none."""
            if (live := _live(sweep_id)) is not None:
                live[0].trial_ended(sweep_id, live[1], live[2], trial, _error_of(trial))

    return SweepStopper(), TrialJobs()


def _error_of(trial: Any) -> str:
    """The last line of a trial's error: Tune writes the traceback to the trial's error file
    (in this process's staging dir) before it calls the callbacks."""
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "the trial errored (Tune kept no error text)"
