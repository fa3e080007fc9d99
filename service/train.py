"""The train command: one job in this process, from flags or a config file, to its summary.

`a2c train ...` (api/cli.py) and `python -m service.train ...` run it; the second is what
`ray job submit` runs as a cluster's driver. Its stdout ends with one JSON line, the summary:
`{"job_id", "env", "steps", "wall_s", "startup_s", "env_steps_per_s", "final_return_mean",
"best_return_mean", "checkpoint", "final_eval_return_mean", "best_checkpoint",
"best_eval_return_mean", "status"}`: `checkpoint` is the final archive and
`final_eval_return_mean` its deterministic evaluation; `best_checkpoint` is the archive with the
highest evaluation return and `best_eval_return_mean` that return (`*_return_mean` without
`eval` are means of the last 20 training episodes). Exit codes: 0 trained the budget, 1 failed,
2 bad input, 3 stopped early (EXIT_* below; docs/configuration.md).
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
from typing import Any, Callable, Literal, NoReturn, get_args

import yaml

from learner.config import A2CConfig, PolicyConfig
from service import storage
from service.records import new_job_id
from service.run.spec import InvalidSpec, JobSpec, archived_spec, build_spec

SPEC_FLAGS = ("env", "total_steps", "workers", "envs_per_worker", "seed", "mode", "eval_every",
              "eval_episodes", "video_every", "checkpoint_every", "learner_cpus", "learner_device",
              "cnn_precision", "max_learner_restarts",
              "name", "tags", "tracking")


EXIT_INVALID = 2
"""Exit code of a bad spec or bad flags (argparse's own code for usage errors)."""
EXIT_FAILED = 1
"""Exit code of a run that failed: training, a checkpoint or the storage."""
EXIT_STOPPED = 3
"""Exit code of a run stopped before its budget (Ctrl-C, SIGTERM): the summary is printed, its
status is STOPPED and the final checkpoint is written, but the budget was not trained."""

NULL = object()
"""What `--mini-batch-size full` parses to: an explicit null, unlike an absent flag (None)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(annotation: Any):
    """An argparse `type` for a pydantic field annotation (validation itself is pydantic's)."""
    args = get_args(annotation)
    if int in args and type(None) in args:  # mini_batch_size: int | None
        return lambda s: NULL if s.lower() in ("full", "none", "null") else s
    if getattr(annotation, "__origin__", None) is tuple:
        return lambda s: [x for x in s.split(",") if x]
    return str


BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True,
                 "false": False, "0": False, "no": False, "off": False}


class BoolFlag(argparse.Action):
    """`--flag` / `--no-flag` (as argparse.BooleanOptionalAction), and `--flag true|false` too,
    as config files and older scripts say it. Unset stays None: the spec's default applies."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        flags = []
        for option in option_strings:
            flags.append(option)
            if option.startswith("--"):
                flags.append("--no-" + option[2:])
        kwargs.pop("type", None)
        super().__init__(flags, dest, nargs="?", metavar="BOOL", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        """True for `--flag` or `--flag true`, False for `--no-flag` or `--flag false`."""
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        value = True if values is None else BOOLEAN_WORDS.get(values.lower())
        if value is None:
            parser.error(f"{option_string}: {values!r} is not a boolean (true/false; or use "
                         f"{option_string} / --no-{option_string[2:]})")
        setattr(namespace, self.dest, value)

    def format_usage(self) -> str:
        """`--flag | --no-flag` in the usage line."""
        return " | ".join(self.option_strings)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with a boolean flag shown as `--flag, --no-flag`."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolFlag):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)


def _default_text(default: Any) -> str:
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or "none"
    return "none" if default is None else str(default)


def _add_field_flag(group, name: str, field, dest: str, extra_help: str = "") -> None:
    """One flag for a pydantic field: choices for a Literal, --x/--no-x for a bool, its default."""
    annotation = field.annotation
    text = (field.description or "").strip().replace("%", "%%")
    default = field.default if field.default_factory is None else field.default_factory()
    help_text = f"{text}{extra_help} (default: {_default_text(default)})"
    if annotation is bool:
        group.add_argument(_flag(name), dest=dest, action=BoolFlag, default=None, help=help_text)
    elif getattr(annotation, "__origin__", None) is Literal:
        group.add_argument(_flag(name), dest=dest, choices=get_args(annotation), default=None, help=help_text)
    else:
        metavar = {int: "N", float: "X"}.get(annotation, name.upper())
        group.add_argument(_flag(name), dest=dest, metavar=metavar, type=_parse_value(annotation),
                           default=None, help=help_text)


def _add_model_flags(group, model: type, dest_prefix: str) -> None:
    """One flag per field of a pydantic model; help from the field's docstring."""
    for name, field in model.model_fields.items():
        _add_field_flag(group, name, field, f"{dest_prefix}{name}")


TRAIN_USAGE = "%(prog)s --env ID [options]   (or --config FILE, or --resume ARCHIVE_OR_DIR, which give the env)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The train command's flags: the job spec's, every A2CConfig and PolicyConfig field, where to run and write."""
    p.usage = TRAIN_USAGE
    p.formatter_class = HelpFormatter
    job = p.add_argument_group("the job")
    job.add_argument("--env", dest="env", metavar="ID", default=None,
                     help="required (unless --config or --resume gives it): a registered gymnasium env id "
                          "(see `a2c envs`)")
    for name in SPEC_FLAGS[1:]:
        _add_field_flag(job, name, JobSpec.model_fields[name], name)
    job.add_argument("--tuned", dest="use_tuned", action=BoolFlag, default=None,
                     help="fill the algorithm and policy fields you leave unset from the tuned table for "
                          "the env (rl-zoo's recipes; docs/configuration.md); --no-tuned uses the defaults "
                          "shown below (default: true)")
    job.add_argument("--config", type=Path, metavar="FILE",
                     help="YAML/JSON job spec (the schema of POST /jobs); flags override it")
    job.add_argument("--resume", metavar="ARCHIVE_OR_DIR",
                     help="continue from a checkpoint archive, or from the newest one of a run directory "
                          "(runs/<job id>); a path or a storage URI")
    where = p.add_argument_group("where it runs and writes")
    where.add_argument("--address", help="Ray cluster address (auto, host:port, ray://...) "
                                         "(default: RAY_ADDRESS, else an embedded local Ray)")
    out = where.add_mutually_exclusive_group()
    out.add_argument("--out", metavar="DIR_OR_URI",
                     help="run directory, a path or a storage URI (default: <storage>/<job id>)")
    out.add_argument("--storage", metavar="PATH_OR_URI", default=None,
                     help="where runs go, each in <storage>/<job id>/: a path, file:///..., or an fsspec/"
                          "pyarrow URI such as s3://bucket/prefix (default: runs, or ~/a2c-runs under "
                          "`ray job submit --working-dir`)")
    where.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray (default: enough for the job)")
    note = (" Defaults are the config's own; an env in the tuned table (CartPole, Acrobot, Pendulum, "
            "LunarLander, ...) takes its tuned values for the fields you leave unset, and `a2c train` "
            "prints them as its [tuned] line.")
    _add_model_flags(p.add_argument_group("the algorithm (A2CConfig)", note.strip()), A2CConfig, "a2c.")
    _add_model_flags(p.add_argument_group("the policy (PolicyConfig)"), PolicyConfig, "policy.")


def read_config(path: Path) -> Any:
    """A YAML/JSON config file's content; InvalidSpec on `config` naming `file:line:column` and
    the problem when it does not parse, or when there is no such file."""
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as exc:
        reason = {FileNotFoundError: "no such file", IsADirectoryError: "a directory, not a file"}.get(
            type(exc), "not a UTF-8 text file")
        raise InvalidSpec("config", f"{path}: {reason}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise InvalidSpec("config", f"{where}: {problem}" + (f" ({context})" if context else "")) from None


def spec_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> JobSpec:
    """The job spec from a config file (or a checkpoint's config), overridden by flags."""
    data: dict[str, Any] = dict(base or {})
    if args.config:
        loaded = read_config(args.config)
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


BAR_SIZE_IF_UNKNOWN = (100, 24)
"""The bar's columns and rows on a terminal that reports a size of 0 (a pty whose size was never
set, as `script` or `docker exec` without a tty size give): tqdm sized to it drew nothing."""


def _terminal_reports_no_size() -> bool:
    """Whether stderr is a terminal whose reported width is 0."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns == 0
    except (OSError, ValueError):
        return False


class ConsoleSink:
    """Writes metrics/events as JSON lines in the run's location and TensorBoard events under
    `<root>/tensorboard/`, feeds the experiment trackers the spec asks for, and shows progress on
    stderr: a tqdm bar on a terminal, else a plain line every few seconds.

    The bar counts env steps from `start_step` (a resumed run's) to `end_step`, the step the last
    update ends at (total_steps rounded up to a whole batch), so it never runs past 100%. Its
    clock starts with the training loop (the "started" event, or the first row), not with Ray's
    start-up; its one speed is tqdm's, env steps per second since then. Each evaluation prints an
    rl-zoo-like `eval/mean_reward` line above the bar.

    The run's location is a path or a storage URI; on an object store the files are rewritten
    at each checkpoint and at the end (see `storage.JsonLines`).
    """

    def __init__(self, location: str, total_steps: int, *, end_step: int | None = None,
                 start_step: int = 0, spec: dict[str, Any] | None = None, job_id: str = "",
                 root: str | None = None) -> None:
        """`spec` (JSON) and `job_id` name the TensorBoard run and go to the trackers; `root` (by
        default `location`) holds `tensorboard/<run name>/` (without a spec: the events go
        straight into `<root>/tensorboard/`)."""
        from service.run.tensorboard_log import TensorBoardLog, tensorboard_dir
        from service.run.tracking import Tracking
        self.total_steps = total_steps
        self.end_step = max(end_step or total_steps, total_steps)
        self.start_step = start_step
        self.metrics_file = storage.JsonLines(storage.join(location, "metrics.jsonl"))
        self.events_file = storage.JsonLines(storage.join(location, "events.jsonl"))
        root = location if root is None else root
        self.tensorboard = TensorBoardLog(tensorboard_dir(root, spec, job_id) if spec
                                          else storage.join(root, "tensorboard"), spec)
        self.tracking = Tracking(spec or {}, job_id, root, self.event)
        self.terminal = _is_terminal()
        self.bar = None
        self.last_print = 0.0

    def _start_bar(self) -> None:
        """Open the bar: its clock starts now."""
        if self.terminal and self.bar is None:
            from tqdm import tqdm
            columns, rows = BAR_SIZE_IF_UNKNOWN if _terminal_reports_no_size() else (None, None)
            self.bar = tqdm(total=self.end_step, initial=self.start_step, unit=" env steps",
                            unit_scale=True, file=sys.stderr, dynamic_ncols=columns is None,
                            ncols=columns, nrows=rows)

    def _write(self, line: str) -> None:
        """A line on stderr, above the bar when there is one (tqdm.write's default is stdout,
        which must hold only the summary)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def event(self, kind: str, message: str) -> None:
        """Record and show an event; "started" (the training loop begins) starts the bar."""
        self.events_file.append({"time": time.time(), "kind": kind, "message": message})
        self._write(f"[{kind}] {message}")
        if kind == "started":
            self._start_bar()

    def metrics(self, row: dict[str, Any]) -> None:
        """Record a row and advance the progress display."""
        self.metrics_file.append(row)
        self.tensorboard.write(row)
        self.tracking.metrics(row)
        ret = row["episode_return_mean"]
        desc = f"return {ret:.1f}" if ret is not None else "return -"
        evaluated = row.get("eval_return_mean")
        if self.terminal:
            self._start_bar()
            if evaluated is not None:
                self._write(f"step {row['step']}: eval/mean_reward {evaluated:.2f}")
            self.bar.n = min(row["step"], self.end_step)
            self.bar.set_postfix_str(desc, refresh=True)
        elif time.monotonic() - self.last_print > 5 or "eval_return_mean" in row:
            self.last_print = time.monotonic()
            extra = f" eval {evaluated:.1f}" if evaluated is not None else ""
            print(f"step {row['step']}/{self.total_steps} {desc}{extra} sps {row['env_steps_per_s']:.0f}",
                  file=sys.stderr)

    def checkpoint(self, info) -> None:
        """Note a written checkpoint and send it to the trackers; the metrics and events so far go
        to storage with it."""
        evaluated = f", eval {info.eval_return_mean:.1f}" if info.eval_return_mean is not None else ""
        self.event("checkpoint", f"{info.location} (step {info.step}{evaluated})")
        self.tracking.checkpoint(info)
        self.metrics_file.flush()
        self.events_file.flush()
        self.tensorboard.flush()

    def rewind(self, step: int) -> None:
        """Drop the rows past `step` from metrics.jsonl: the resumed run records them again."""
        self.metrics_file.keep(lambda row: row["step"] <= step)

    def close(self, status: str = "SUCCEEDED") -> None:
        """Finish the trackers' runs with the job's `status`, flush files and end the progress bar."""
        self.tracking.close(status)
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


def in_ray_package(cwd: Path | None = None) -> bool:
    """Whether this process runs from Ray's unpacked copy of a submitted job's --working-dir."""
    return RAY_PACKAGE_DIR in (Path.cwd() if cwd is None else cwd).parts


PRELOADED_PACKAGES = ("learner", "workers", "service")
"""The packages `preload_modules` imports whole when the driver runs from Ray's copy of them."""


def preload_modules(packages: tuple[str, ...] = PRELOADED_PACKAGES) -> list[str]:
    """Import every module of `packages` now; returns those skipped for a missing optional extra.

    The driver of a `ray job submit --working-dir` job runs from Ray's unpacked copy of the
    package, and Ray unpacks it again over the same path (deleting it first) when the job's
    runtime env is set up on a node that shares the disk: while Ray connects and while actors
    start. A module imported lazily in that window is not found (`No module named
    'service.run.tracking'`), so the driver loads them all before it connects.
    """
    import importlib
    import pkgutil
    skipped = []
    for name in packages:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            try:
                importlib.import_module(module.name)
            except ImportError as exc:  # an optional extra (ale_py, mujoco, ...) not installed
                if exc.name is None or exc.name.split(".")[0] in PRELOADED_PACKAGES:
                    raise
                skipped.append(module.name)
    return skipped


def run_root(out: str | None, base: str | None, cwd: Path | None = None) -> str:
    """Where a run's files go: `out` (the run directory itself), else `base`, by default `runs` in
    the working directory. A run writes to `<base>/<job id>/` (`run_location`), and its TensorBoard
    file to `<root>/tensorboard/<run name>/`.

    Under `ray job submit --working-dir`, the working directory is Ray's unpacked copy of the
    package: Ray unpacks it again, over the same path, for every node that runs an actor of the
    job when nodes share a disk, which deletes what the driver wrote there (a run's files
    vanished between its start and its first metrics row), and it deletes the copy once no job
    uses it. There the default base is ~/a2c-runs, and a relative path given is refused.
    """
    from_ray_package = in_ray_package(cwd)
    for flag, given in (("out", out), ("storage", base)):
        if from_ray_package and given is not None and storage.is_local(given) \
                and not storage.local_path(given).is_absolute():
            raise InvalidSpec(flag, f"{given!r} is relative to the job's working directory, which is Ray's "
                              "unpacked copy of --working-dir (Ray replaces and deletes it): give an "
                              "absolute path or a URI such as s3://bucket/prefix")
    if out is not None:
        return out
    if base is None:
        base = str(SUBMITTED_RUNS.expanduser()) if from_ray_package else "runs"
    return base


def run_location(out: str | None, base: str | None, job_id: str, cwd: Path | None = None) -> str:
    """The run directory: `out`, else `<base>/<job id>` (see `run_root` for the default base)."""
    root = run_root(out, base, cwd)
    return out if out is not None else storage.join(root, job_id)


def run(args: argparse.Namespace) -> int:
    """Validate, connect to Ray, run one job, print the summary JSON line."""
    from service.cluster import connect_in_background
    from service.run.spec import env_spaces, job_spaces

    if in_ray_package():
        preload_modules()  # before Ray connects and unpacks the package again over this copy
    resume_from, resume = None, None
    if args.resume:  # (checkpoints import torch: without a resume, that waits until Ray is starting)
        from service.run.checkpoints import open_checkpoint
        resume_from, resume = open_checkpoint(args.resume)
    spec = spec_from_args(args, base=archived_spec(resume.config) if resume else None)
    env_spaces(spec)  # a bad spec, env or env_kwargs fails here, before Ray starts
    connected = connect_in_background(args.address, args.num_cpus or max(os.cpu_count() or 1, spec.cpus_needed))
    try:
        # While Ray starts: import torch and the training loop, and check the policy's size and
        # the checkpoint against the job.
        job_spaces(spec, resume)
        from service.run.loop import Trainer
        job_id = new_job_id()
        out = run_location(args.out, args.storage, job_id)
        root = run_root(args.out, args.storage)
        storage.write_bytes_atomic(storage.join(out, "config.json"), spec.model_dump_json(indent=2).encode())
    except BaseException as exc:
        report_now(exc)  # say it now, not after Ray has come up only to be shut down
        _disconnect_ray(connected)
        raise
    start_step = resume.state.step if resume else 0
    batches = max(-(-(spec.total_steps - start_step) // spec.a2c.steps_per_batch), 0)
    sink = ConsoleSink(out, spec.total_steps, start_step=start_step,
                       end_step=start_step + batches * spec.a2c.steps_per_batch,
                       spec=spec.model_dump(mode="json"), job_id=job_id, root=root)
    status = "FAILED"
    if resume is not None:
        sink.event("resume", f"from {resume_from}, step {resume.state.step}")
    try:
        where, took = connected()
        sink.event("ray", f"{where}, up in {took:.2f}s")
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
        status = summary["status"]
    finally:
        sink.close(status)
        _disconnect_ray(connected)
    print(json.dumps(summary), flush=True)
    return EXIT_STOPPED if summary["status"] == "STOPPED" else 0


def _disconnect_ray(connected: Callable[[], tuple[str, float]]) -> None:
    """Leave Ray, once `connected` (see `service.cluster.connect_in_background`) is done, before
    the summary is printed, so that none of Ray's own log lines (its driver forwards raylet
    warnings, e.g. about a lost node) can land after it: the summary must be the last line of
    the job's log (`ray job logs`)."""
    import contextlib

    from service.cluster import disconnect
    with contextlib.suppress(Exception):
        connected()
    with contextlib.suppress(Exception):
        disconnect()


class UsageError(ValueError):
    """A command's input that cannot work (not a job spec's field): shown as one line, exit 2."""


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """(the lines a user gets, the exit code) for an error of theirs or of the run: EXIT_INVALID
    for bad input (one line per problem of a spec), EXIT_FAILED for a checkpoint, storage or
    training failure; None for anything else (a bug: its traceback is shown)."""
    from learner.checkpoint import CheckpointRejected
    from service.run.worker_group import TrainingFailed
    if isinstance(exc, InvalidSpec):
        return "\n".join(f"a2c: invalid job spec: {field}: {message}" for field, message in exc.problems), EXIT_INVALID
    if isinstance(exc, UsageError):
        return f"a2c: {exc}", EXIT_INVALID
    if isinstance(exc, (CheckpointRejected, TrainingFailed, FileNotFoundError, storage.StorageUnavailable)):
        return f"a2c: {type(exc).__name__}: {exc}", EXIT_FAILED
    return None


def report_now(exc: BaseException) -> None:
    """Print a user error's lines at once (`report_errors` then only sets the exit code)."""
    said = user_error(exc)
    if said is not None:
        print(said[0], file=sys.stderr, flush=True)
        exc.a2c_reported = True


def report_errors(command: Callable[[], int]) -> int:
    """Run a command; a user error ends it with clear lines on stderr (one per problem) and exit
    code 2 (bad input) or 1 (a checkpoint, storage or training failure), not a traceback."""
    try:
        return command()
    except Exception as exc:  # noqa: BLE001 - users get clear lines, not a traceback
        said = user_error(exc)
        if said is None:
            raise
        if not getattr(exc, "a2c_reported", False):
            print(said[0], file=sys.stderr)
        return said[1]


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args`, but an unknown flag is refused by the (sub)command it was given to,
    with its usage and the closest flags it has ("did you mean --total-steps?")."""
    import difflib
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    target = parser
    for action in parser._actions:  # the subcommand's own parser, when there are subcommands
        if isinstance(action, argparse._SubParsersAction):
            target = action.choices.get(getattr(args, action.dest, None), parser)
    flags = [f for f in target._option_string_actions if f.startswith("--")]
    hints = []
    for arg in extra:
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=2, cutoff=0.6)
            if close:
                hints.append(f"{arg}: did you mean {' or '.join(close)}?")
    target.error(f"unrecognized arguments: {' '.join(extra)}" + ("; " + "; ".join(hints) if hints else ""))


def exit_now(code: int) -> NoReturn:
    """End this process with `code` once its work is out, without the interpreter's teardown.

    Run at the end of a command: non-daemon threads are joined and the atexit functions run, as
    at a normal exit (Ray's shutdown, logging's flush, trackers'), and stdout and stderr are
    flushed; then `os._exit` skips the module teardown that follows, which for torch and Ray
    takes most of a second (docs/benchmarks.md, "Start-up and exit"). Nothing of the job is in
    flight by then: `run` closes its files and leaves Ray before it returns.
    """
    import atexit
    import contextlib
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what the interpreter runs at exit, before the teardown skipped here
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """`python -m service.train ...`: the same flags as `a2c train`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m service.train",
                                     description="Train one A2C job on Ray (embedded local Ray by default).")
    add_arguments(parser)
    args = parse_args(parser, argv)
    return report_errors(lambda: run(args))


if __name__ == "__main__":
    exit_now(main())
