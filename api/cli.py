"""The `a2c` command: train, sweep, evaluate, export, checkpoints, serve, envs.

The command line is the second front end beside HTTP: `train` is the train command of
`service.train` (also `python -m service.train`), `serve` runs the HTTP API of this package.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from service import train


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`a2c evaluate`: play episodes with a checkpoint's policy, without Ray: its most likely
    actions, or with --stochastic actions sampled from it (seeded by --seed)."""
    import numpy as np

    from service.run.checkpoints import open_checkpoint
    from service.run.spec import InvalidSpec, spaces_difference
    from workers.env import UnknownEnvironment, describe_spaces
    from workers.evaluate import evaluate_policy

    path, ckpt = open_checkpoint(args.archive, args.checkpoint)
    env = args.env or ckpt.env_id
    env_kwargs = ckpt.config.get("env_kwargs", {})
    if env != ckpt.env_id:  # the policy's layers are sized for the checkpoint's spaces
        try:
            spaces = describe_spaces(env, env_kwargs)
        except UnknownEnvironment as exc:
            raise InvalidSpec("env", str(exc)) from None
        if spaces != ckpt.spaces:
            raise train.UsageError(
                f"--env {env}: its spaces differ from the checkpoint's ({ckpt.env_id}): "
                f"{spaces_difference(spaces, ckpt.spaces)}; evaluate with --env {ckpt.env_id} or an env "
                "with the same spaces")
    deterministic = not args.stochastic
    returns = evaluate_policy(ckpt.acting(args.seed), env, env_kwargs, args.episodes, args.seed,
                              deterministic=deterministic)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    print(f"{env}: return {mean:.2f} ± {std:.2f} over {args.episodes} episodes"
          + ("" if deterministic else " (sampled actions)"), file=sys.stderr)
    result = {"checkpoint": str(path), "env": env, "episodes": args.episodes, "deterministic": deterministic,
              "return_mean": mean, "return_std": std}
    if args.video is not None:
        from workers.video import record_episodes
        videos = record_episodes(ckpt.acting(args.seed), env, env_kwargs, args.episodes, args.seed, args.video,
                                 deterministic=deterministic)
        print(f"wrote {len(videos)} video(s) to {args.video}", file=sys.stderr)
        result["videos"] = [{"path": v.path, "return": v.episode_return, "frames": v.frames} for v in videos]
    print(json.dumps(result), flush=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`a2c export`: a checkpoint's policy as a model file (ONNX), written atomically."""
    from learner.export import OPSET
    from service import storage
    from service.run.checkpoints import export_policy, find_archive

    path = find_archive(args.archive, args.checkpoint)
    data = export_policy(path, args.format)
    storage.write_bytes_atomic(args.output, data)
    print(f"wrote {args.output} ({len(data)} bytes, {args.format} opset {OPSET})", file=sys.stderr)
    print(json.dumps({"checkpoint": str(path), "output": args.output, "format": args.format,
                      "opset": OPSET, "size_bytes": len(data)}), flush=True)
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """`a2c checkpoints`: a run directory's archives with their evaluation returns; `*` marks
    the best (what `--checkpoint best` loads)."""
    from service.run.checkpoints import best_of, run_archives

    entries = run_archives(args.run)
    if not entries:
        raise FileNotFoundError(f"no checkpoint archive under {args.run}")
    best = best_of(entries)

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"
    print(f"{'checkpoint':<18}{'step':>12}{'eval return':>13}{'train return':>14}  best")
    for e in entries:
        mark = "*" if best is not None and e.id == best.id else ""
        print(f"{e.id:<18}{e.step:>12}{cell(e.eval_return_mean):>13}{cell(e.return_mean):>14}  {mark}")
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


EXIT_SERVE_FAILED = 3
"""uvicorn's exit code when the server cannot start (uvicorn.main.STARTUP_FAILURE)."""


def cmd_serve(args: argparse.Namespace) -> int:
    """`a2c serve`: the HTTP API (see api/). A port it cannot listen on is refused first, in a
    fraction of a second, not after Ray's start-up."""
    from api.config import port_problem, settings_from_args
    settings = settings_from_args(args)
    problem = port_problem(settings.host, settings.port)
    if problem is not None:
        print(f"a2c serve: {problem}", file=sys.stderr)
        return EXIT_SERVE_FAILED
    from api.server import serve
    return serve(args)


def version() -> str:
    """This package's version (its installed metadata; the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed
    try:
        return installed("a2c-service")
    except PackageNotFoundError:
        return "0.1.0+source"


def build_parser() -> argparse.ArgumentParser:
    """The `a2c` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="a2c", description="A2C training as a service, on Ray.",
        epilog="Start with `a2c train --env CartPole-v1`; `a2c COMMAND --help` for a command's flags. "
               "Exit codes: 0 done, 1 failed, 2 bad input, 3 a run stopped early (docs/configuration.md).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_arguments(sub.add_parser(
        "train", help="train one job on Ray (embedded local Ray by default)",
        description="Train one A2C job: on an embedded local Ray, or on a cluster with --address. "
                    "Writes runs/<job id>/ (config, metrics, events, checkpoints) and its TensorBoard file to "
                    "runs/tensorboard/<env>-[<name>-]<job id>/; "
                    "the last line of stdout is the summary JSON."))
    from api import sweep_command
    sweep_command.add_arguments(sub.add_parser(
        "sweep", help="a hyperparameter sweep on Ray Tune (each trial a job), on --server or an embedded server",
        description="Run a hyperparameter sweep from a YAML file on Ray Tune, each trial a job, on a running "
                    "`a2c serve` (--server) or on an embedded one (docs/sweeps.md)."))
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint archive (or one of a run directory's)",
                        description="Play episodes with a checkpoint's policy (its most likely actions, or "
                                    "sampled ones with --stochastic), without Ray; prints the mean return, "
                                    "then one JSON line on stdout.")
    ev.add_argument("archive", metavar="ARCHIVE_OR_DIR",
                    help="an archive or a run directory: a path or a storage URI (s3://..., file://...)")
    ev.add_argument("--episodes", type=int, default=10, metavar="N", help="episodes to play (default: 10)")
    ev.add_argument("--env", metavar="ID", help="env id to play in; its spaces must match the checkpoint's "
                                                "(default: the checkpoint's env)")
    ev.add_argument("--seed", type=int, default=12345, metavar="N",
                    help="seed of the first episode's env; each next episode takes the next seed (default: 12345)")
    ev.add_argument("--checkpoint", default="latest", metavar="WHICH",
                    help="for a run directory: latest (default), best (the highest evaluation return) or an id")
    ev.add_argument("--stochastic", action="store_true",
                    help="sample each action from the policy, seeded by --seed, instead of taking the most likely "
                         "one (rl-zoo evaluates Atari games this way)")
    ev.add_argument("--video", type=Path, metavar="DIR",
                    help="also record each episode as DIR/episode-<i>.mp4 (the env's rgb_array render; "
                         "Atari: the raw screen); with --stochastic these are episodes of their own, "
                         "with their own returns")
    ex = sub.add_parser("export", help="export a checkpoint's policy as an ONNX model (raw observations -> action)",
                        description="Write a checkpoint's policy as an ONNX model: raw observations in, the "
                                    "deterministic action out (docs/api.md#onnx-export).")
    ex.add_argument("archive", metavar="CHECKPOINT",
                    help="an archive or a run directory: a path or a storage URI")
    ex.add_argument("--checkpoint", default="latest", metavar="WHICH",
                    help="for a run directory: latest (default), best or an id")
    ex.add_argument("--format", default="onnx", choices=["onnx"])
    ex.add_argument("-o", "--output", required=True, metavar="FILE_OR_URI", help="where to write the model")
    ck = sub.add_parser("checkpoints", help="list a run directory's checkpoints with their evaluation returns",
                        description="A run's archives: step, eval return, training return; * marks the best.")
    ck.add_argument("run", metavar="RUN_DIR", help="a run directory: a path or a storage URI")
    sv = sub.add_parser("serve", help="run the HTTP API and dashboard (uvicorn) with an embedded or existing Ray",
                        description="Run the job service: the HTTP API, its docs at /docs and the dashboard "
                                    "at /. Flags override the A2C_* environment settings (docs/api.md).")
    sv.add_argument("--host", default=None, help="interface to listen on (default: A2C_HOST, else 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="TCP port (default: A2C_PORT, else 8000)")
    sv.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                    help="jobs database, TensorBoard files and, by default, checkpoints "
                         "(default: A2C_DATA_DIR, else ./a2c-data)")
    sv.add_argument("--address", default=None,
                    help="Ray cluster to join (auto, host:port, ray://...) (default: A2C_ADDRESS, else an "
                         "embedded local Ray)")
    sv.add_argument("--storage", default=None, metavar="PATH_OR_URI",
                    help="where job checkpoints go (A2C_STORAGE); default <data-dir>/jobs")
    sub.add_parser("envs", help="list the registered gymnasium env ids",
                   description="The gymnasium env ids a job may name, one per line.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `a2c` console script. With no command it prints its help (exit 0)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = train.parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"train": train.run, "sweep": cmd_sweep, "evaluate": cmd_evaluate, "export": cmd_export,
                "checkpoints": cmd_checkpoints, "serve": cmd_serve, "envs": cmd_envs}
    return train.report_errors(lambda: handlers[args.command](args))


def console() -> NoReturn:
    """The `a2c` console script (and `python -m api.cli`): `main`, then `train.exit_now` with its code."""
    train.exit_now(main())


if __name__ == "__main__":
    console()
