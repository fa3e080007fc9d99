"""The `a2c` command: train, evaluate, serve, envs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, get_args

import yaml

from learner.config import A2CConfig, PolicyConfig
from service import storage
from service.spec import InvalidSpec, JobSpec, build_spec

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


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one job on Ray (embedded local Ray by default)")
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
    where.add_argument("--storage", metavar="PATH_OR_URI", default="runs",
                       help="where runs go, each in <storage>/<job id>/: a path, file:///..., or an fsspec/"
                            "pyarrow URI such as s3://bucket/prefix (default runs)")
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
        from service.tensorboard_log import TensorBoardLog
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
        self.event("checkpoint", f"{info.location} (step {info.step})")
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


def cmd_train(args: argparse.Namespace) -> int:
    """`a2c train`: validate, connect to Ray, run one job, print the summary JSON line."""
    import uuid

    from service.cluster import connect
    from service.trainer import Trainer, job_spaces, read_checkpoint

    resume = read_checkpoint(args.resume) if args.resume else None
    spec = spec_from_args(args, base=resume.config if resume else None)
    job_spaces(spec, resume)  # the env, policy and checkpoint must fit before Ray starts
    job_id = uuid.uuid4().hex[:12]
    out = args.out or storage.join(args.storage, job_id)
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`a2c evaluate`: play deterministic episodes with a checkpoint's policy, without Ray."""
    import numpy as np

    from service.trainer import read_checkpoint
    from workers.evaluate import evaluate_policy

    path = args.archive
    if not path.endswith(".tar.gz") or (storage.is_local(path) and storage.local_path(path).is_dir()):
        # A run directory (or a storage prefix): its newest archive; names sort by step.
        found = [loc for loc in storage.list_files(path) if loc.endswith(".tar.gz")]
        if not found:
            raise FileNotFoundError(f"no checkpoint archive under {path}")
        path = max(found, key=lambda loc: loc.rsplit("/", 1)[-1])
    ckpt = read_checkpoint(path)
    env = args.env or ckpt.env_id
    returns = evaluate_policy(ckpt.policy(), env, ckpt.config.get("env_kwargs", {}), args.episodes, args.seed)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    print(f"{env}: return {mean:.2f} ± {std:.2f} over {args.episodes} episodes", file=sys.stderr)
    print(json.dumps({"checkpoint": str(path), "env": env, "episodes": args.episodes,
                      "return_mean": mean, "return_std": std}), flush=True)
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    """`a2c envs`: the registered gymnasium env ids a job may name; Atari ids say their
    preprocessing and sticky actions, and a missing extra is named with its pip command."""
    import gymnasium as gym

    from workers.atari import describe_atari, is_atari
    from workers.env import register_optional_envs
    missing = register_optional_envs()
    for env_id in sorted(k for k in gym.registry if ":" not in k):
        print(f"{env_id}  ({describe_atari(env_id)})" if is_atari(env_id) else env_id)
    for extra in missing:
        print(f"(Atari ids are not listed: pip install 'a2c-service[{extra}]')", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`a2c serve`: the HTTP API (see api/)."""
    from api.server import serve
    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    """The `a2c` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="a2c", description="A2C training as a service, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint archive (or the newest under a dir)")
    ev.add_argument("archive", metavar="ARCHIVE_OR_DIR",
                    help="an archive or a run directory: a path or a storage URI (s3://..., file://...)")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--env", help="env id (default: the checkpoint's)")
    ev.add_argument("--seed", type=int, default=12345)
    sv = sub.add_parser("serve", help="run the HTTP API (uvicorn) with an embedded or existing Ray")
    sv.add_argument("--host", default=None)
    sv.add_argument("--port", type=int, default=None)
    sv.add_argument("--data-dir", type=Path, default=None)
    sv.add_argument("--address", default=None)
    sv.add_argument("--storage", default=None, metavar="PATH_OR_URI",
                    help="where job checkpoints go (A2C_STORAGE); default <data-dir>/jobs")
    sub.add_parser("envs", help="list the registered gymnasium env ids")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `a2c` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "serve": cmd_serve, "envs": cmd_envs}
    try:
        return handlers[args.command](args)
    except InvalidSpec as exc:
        print(f"a2c: invalid job spec: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - users get one clear line, not a traceback
        from learner.checkpoint import CheckpointRejected
        from service.trainer import TrainingFailed
        if isinstance(exc, (CheckpointRejected, TrainingFailed, FileNotFoundError,
                            storage.StorageUnavailable)):
            print(f"a2c: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
