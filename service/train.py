"""The train command: one job in this process, from flags or a config file, to its summary.

`a2c train ...` (api/cli.py) and `python -m service.train ...` run it; the second is what
`ray job submit` runs as a cluster's driver. Its stdout ends with one JSON line, the summary:
`{"job_id", "env", "steps", "wall_s", "startup_s", "env_steps_per_s", "final_return_mean",
"best_return_mean", "checkpoint", "final_eval_return_mean", "best_checkpoint",
"best_eval_return_mean", "status"}`: `checkpoint` is the final archive and
`final_eval_return_mean` its deterministic evaluation; `best_checkpoint` is the archive with the
highest evaluation return and `best_eval_return_mean` that return (`*_return_mean` without
`eval` are means of the last 20 training episodes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, get_args

import yaml

from learner.config import A2CConfig, PolicyConfig
from service import storage
from service.records import new_job_id
from service.run.spec import InvalidSpec, JobSpec, build_spec

SPEC_FLAGS = ("env", "total_steps", "workers", "envs_per_worker", "seed", "mode", "eval_every",
              "eval_episodes", "checkpoint_every", "learner_cpus", "learner_device", "max_learner_restarts")


NULL = object()
"""What `--mini-batch-size full` parses to: an explicit null, unlike an absent flag (None)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(annotation: Any):
    """An argparse `type` for a pydantic field annotation (validation itself is pydantic's)."""
    args = get_args(annotation)
    if annotation is bool:
        return lambda s: {"true": True, "1": True, "yes": True, "false": False, "0": False,
                          "no": False}.get(s.lower(), s)
    if int in args and type(None) in args:  # mini_batch_size: int | None
        return lambda s: NULL if s.lower() in ("full", "none", "null") else s
    if getattr(annotation, "__origin__", None) is tuple:
        return lambda s: [x for x in s.split(",") if x]
    return str


def _add_model_flags(parser: argparse.ArgumentParser, model: type, dest_prefix: str) -> None:
    """One flag per field of a pydantic model; help from the field's docstring."""
    for name, field in model.model_fields.items():
        parser.add_argument(_flag(name), dest=f"{dest_prefix}{name}", metavar=name.upper(),
                            type=_parse_value(field.annotation),
                            default=None, help=(field.description or "") + f" (default {field.default})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The train command's flags: the job spec's, every A2CConfig and PolicyConfig field, where to run and write."""
    for name in SPEC_FLAGS:
        field = JobSpec.model_fields[name]
        p.add_argument(_flag(name), dest=name, default=None, help=field.description)
    p.add_argument("--no-tuned", dest="use_tuned", action="store_const", const=False, default=None,
                   help="ignore the tuned hyperparameter table; use A2CConfig defaults for unset fields")
    p.add_argument("--config", type=Path, help="YAML/JSON job spec (the schema of POST /jobs); flags override it")
    p.add_argument("--address", help="Ray cluster address (auto, host:port, ray://...); default RAY_ADDRESS or embedded")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR_OR_URI",
                       help="run directory, a path or a storage URI (default <storage>/<job id>)")
    where.add_argument("--storage", metavar="PATH_OR_URI", default=None,
                       help="where runs go, each in <storage>/<job id>/: a path, file:///..., or an fsspec/"
                            "pyarrow URI such as s3://bucket/prefix (default runs, or ~/a2c-runs under "
                            "`ray job submit --working-dir`)")
    p.add_argument("--resume", metavar="ARCHIVE", help="checkpoint archive (path or storage URI) to continue from")
    p.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray (default: enough for the job)")
    _add_model_flags(p, A2CConfig, "a2c.")
    _add_model_flags(p, PolicyConfig, "policy.")


def spec_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> JobSpec:
    """The job spec from a config file (or a checkpoint's config), overridden by flags."""
    data: dict[str, Any] = dict(base or {})
    if args.config:
        loaded = yaml.safe_load(args.config.read_text())
        if not isinstance(loaded, dict):
            raise InvalidSpec("config", f"{args.config} must hold a mapping of job spec fields")
        data.update(loaded)
    for key, value in vars(args).items():
        if value is None:
            continue
        value = None if value is NULL else value
        if key.startswith(("a2c.", "policy.")):
            section, field = key.split(".", 1)
            data[section] = {**(data.get(section) or {}), field: value}
        elif key in SPEC_FLAGS or key == "use_tuned":
            data[key] = value
    if "env" not in data:
        raise InvalidSpec("env", "required: pass --env ID or give env in --config")
    return build_spec(data)


def _is_terminal() -> bool:
    return sys.stderr.isatty()


class ConsoleSink:
    """Writes metrics/events as JSON lines and TensorBoard events in the run's location, and shows
    progress on stderr: a tqdm bar on a terminal, else a plain line every few seconds.

    The run's location is a path or a storage URI; on an object store the files are rewritten
    at each checkpoint and at the end (see `storage.JsonLines`).
    """

    def __init__(self, location: str, total_steps: int) -> None:
        from service.run.tensorboard_log import TensorBoardLog
        self.total_steps = total_steps
        self.metrics_file = storage.JsonLines(storage.join(location, "metrics.jsonl"))
        self.events_file = storage.JsonLines(storage.join(location, "events.jsonl"))
        self.tensorboard = TensorBoardLog(location)
        self.bar = None
        if _is_terminal():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, unit="step", unit_scale=True, file=sys.stderr)
        self.last_print = 0.0

    def event(self, kind: str, message: str) -> None:
        """Record and show an event."""
        self.events_file.append({"time": time.time(), "kind": kind, "message": message})
        (self.bar.write if self.bar else lambda m: print(m, file=sys.stderr))(f"[{kind}] {message}")

    def metrics(self, row: dict[str, Any]) -> None:
        """Record a row and advance the progress display."""
        self.metrics_file.append(row)
        self.tensorboard.write(row)
        ret = row["episode_return_mean"]
        desc = f"return {ret:.1f}" if ret is not None else "return -"
        if self.bar is not None:
            self.bar.n = row["step"]
            self.bar.set_postfix_str(f"{desc} sps {row['env_steps_per_s']:.0f}", refresh=True)
        elif time.monotonic() - self.last_print > 5 or "eval_return_mean" in row:
            self.last_print = time.monotonic()
            extra = f" eval {row['eval_return_mean']:.1f}" if "eval_return_mean" in row else ""
            print(f"step {row['step']}/{self.total_steps} {desc}{extra} sps {row['env_steps_per_s']:.0f}",
                  file=sys.stderr)

    def checkpoint(self, info) -> None:
        """Note a written checkpoint; the metrics and events so far go to storage with it."""
        evaluated = f", eval {info.eval_return_mean:.1f}" if info.eval_return_mean is not None else ""
        self.event("checkpoint", f"{info.location} (step {info.step}{evaluated})")
        self.metrics_file.flush()
        self.events_file.flush()
        self.tensorboard.flush()

    def rewind(self, step: int) -> None:
        """Drop the rows past `step` from metrics.jsonl: the resumed run records them again."""
        self.metrics_file.keep(lambda row: row["step"] <= step)

    def close(self) -> None:
        """Flush files and end the progress bar."""
        if self.bar is not None:
            self.bar.close()
        self.metrics_file.close()
        self.events_file.close()
        self.tensorboard.flush()


RAY_PACKAGE_DIR = "working_dir_files"
"""The folder of Ray's runtime-env cache into which a job's `--working-dir` is unpacked, on each
node that runs something of the job (`<session>/runtime_resources/working_dir_files/_ray_pkg_<hash>`)."""
SUBMITTED_RUNS = Path("~/a2c-runs")
"""Where runs go by default when the working directory is Ray's copy of a submitted job's
--working-dir (as Ray Train's results go to ~/ray_results)."""


def run_location(out: str | None, base: str | None, job_id: str, cwd: Path | None = None) -> str:
    """The run directory: `out`, else `<base>/<job id>`, `base` by default `runs` in the working
    directory.

    Under `ray job submit --working-dir`, the working directory is Ray's unpacked copy of the
    package: Ray unpacks it again, over the same path, for every node that runs an actor of the
    job when nodes share a disk, which deletes what the driver wrote there (a run's files
    vanished between its start and its first metrics row), and it deletes the copy once no job
    uses it. There the default base is ~/a2c-runs, and a relative path given is refused.
    """
    in_ray_package = RAY_PACKAGE_DIR in (Path.cwd() if cwd is None else cwd).parts
    for flag, given in (("out", out), ("storage", base)):
        if in_ray_package and given is not None and storage.is_local(given) \
                and not storage.local_path(given).is_absolute():
            raise InvalidSpec(flag, f"{given!r} is relative to the job's working directory, which is Ray's "
                              "unpacked copy of --working-dir (Ray replaces and deletes it): give an "
                              "absolute path or a URI such as s3://bucket/prefix")
    if out is not None:
        return out
    if base is None:
        base = str(SUBMITTED_RUNS.expanduser()) if in_ray_package else "runs"
    return storage.join(base, job_id)


def run(args: argparse.Namespace) -> int:
    """Validate, connect to Ray, run one job, print the summary JSON line."""
    from service.cluster import connect
    from service.run.checkpoints import read_checkpoint
    from service.run.loop import Trainer
    from service.run.spec import job_spaces

    resume = read_checkpoint(args.resume) if args.resume else None
    spec = spec_from_args(args, base=resume.config if resume else None)
    job_spaces(spec, resume)  # the env, policy and checkpoint must fit before Ray starts
    job_id = new_job_id()
    out = run_location(args.out, args.storage, job_id)
    storage.write_bytes_atomic(storage.join(out, "config.json"), spec.model_dump_json(indent=2).encode())
    sink = ConsoleSink(out, spec.total_steps)
    try:
        connecting = time.monotonic()
        where = connect(args.address, num_cpus=args.num_cpus or max(os.cpu_count() or 1, spec.cpus_needed))
        sink.event("ray", f"{where}, up in {time.monotonic() - connecting:.2f}s")
        if spec.tuned:
            sink.event("tuned", f"from the tuned table for {spec.env}: "
                       + ", ".join(f"{k}={spec.value_at(k)}" for k in spec.tuned))
        trainer = Trainer(spec, out, sink, job_id=job_id, resume=resume)

        def stop_gracefully(signum, frame):
            # First Ctrl-C/SIGTERM: finish the update, write a final checkpoint, print the summary.
            sink.event("stop", f"signal {signum}: stopping after this update")
            trainer.request_stop()
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

        signal.signal(signal.SIGINT, stop_gracefully)
        signal.signal(signal.SIGTERM, stop_gracefully)
        summary = trainer.run()
    finally:
        sink.close()
        _disconnect_ray()
    print(json.dumps(summary), flush=True)
    return 0


def _disconnect_ray() -> None:
    """Leave Ray before the summary is printed, so that none of Ray's own log lines (its driver
    forwards raylet warnings, e.g. about a lost node) can land after it: the summary must be
    the last line of the job's log (`ray job logs`)."""
    import contextlib

    import ray
    with contextlib.suppress(Exception):
        ray.shutdown()


def report_errors(command: Callable[[], int]) -> int:
    """Run a command; a user error ends it with one clear line on stderr and exit code 2 (a bad
    spec) or 1 (a checkpoint, storage or training failure), not a traceback."""
    try:
        return command()
    except InvalidSpec as exc:
        print(f"a2c: invalid job spec: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - users get one clear line, not a traceback
        from learner.checkpoint import CheckpointRejected
        from service.run.worker_group import TrainingFailed
        if isinstance(exc, (CheckpointRejected, TrainingFailed, FileNotFoundError,
                            storage.StorageUnavailable)):
            print(f"a2c: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        raise


def main(argv: list[str] | None = None) -> int:
    """`python -m service.train ...`: the same flags as `a2c train`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m service.train",
                                     description="Train one A2C job on Ray (embedded local Ray by default).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return report_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
