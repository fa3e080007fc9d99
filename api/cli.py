"""The `a2c` command: train, sweep, evaluate, serve, envs.

The command line is the second front end beside HTTP: `train` is the train command of
`service.train` (also `python -m service.train`), `serve` runs the HTTP API of this package.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from service import storage
from service import train


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`a2c evaluate`: play deterministic episodes with a checkpoint's policy, without Ray."""
    import numpy as np

    from service.run.checkpoints import read_checkpoint
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


def cmd_sweep(args: argparse.Namespace) -> int:
    """`a2c sweep`: a hyperparameter sweep on Ray Tune, each trial a job (api/sweep_command.py)."""
    from api import sweep_command
    return sweep_command.run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    """`a2c serve`: the HTTP API (see api/)."""
    from api.server import serve
    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    """The `a2c` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="a2c", description="A2C training as a service, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_arguments(sub.add_parser("train", help="train one job on Ray (embedded local Ray by default)"))
    from api import sweep_command
    sweep_command.add_arguments(sub.add_parser(
        "sweep", help="a hyperparameter sweep on Ray Tune (each trial a job), on --server or an embedded server"))
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
    handlers = {"train": train.run, "sweep": cmd_sweep, "evaluate": cmd_evaluate, "serve": cmd_serve,
                "envs": cmd_envs}
    return train.report_errors(lambda: handlers[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
