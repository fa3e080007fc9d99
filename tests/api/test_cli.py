"""The `a2c` command as a user runs it, in a subprocess (CleanRL-style smoke tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def a2c(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "api.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("flags,field", [
    (["--env", "NoSuchEnv-v0"], "env"),
    (["--env", "some.module:Env"], "env"),
    (["--env", "CartPole-v1", "--learning-rate", "-0.1"], "a2c.learning_rate"),
    (["--env", "CartPole-v1", "--workers", "3", "--steps-per-batch", "100"], "steps_per_batch"),
    (["--env", "CartPole-v1", "--use-sde", "true"], "policy.use_sde"),
    (["--env", "Pendulum-v1", "--config", "BAD_KWARGS"], "env_kwargs"),
])
def test_bad_spec_fails_before_ray_starts_and_names_the_field(flags, field, tmp_path):
    if "BAD_KWARGS" in flags:  # an env kwarg the env's constructor does not take
        (tmp_path / "job.yaml").write_text("env_kwargs: {no_such_kwarg: 1}\n")
        flags = [str(tmp_path / "job.yaml") if f == "BAD_KWARGS" else f for f in flags]
    result = a2c("train", *flags, "--out", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"invalid job spec: {field}" in result.stderr or field in result.stderr
    assert "[ray]" not in result.stderr  # no Ray was started, so no actor either
    assert result.stdout == ""


def test_a_policy_too_large_fails_in_one_line_though_ray_was_starting(tmp_path):
    # The policy's size needs torch, which is imported while Ray starts: the error still comes
    # as one line naming the field, no traceback, and the embedded Ray is shut down.
    result = a2c("train", "--env", "CartPole-v1", "--hidden-sizes", ",".join(["4096"] * 3),
                 "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "invalid job spec: policy.hidden_sizes" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "run").exists()


def test_train_then_evaluate_tiny_budget(tmp_path):
    out = tmp_path / "run"
    result = a2c("train", "--env", "CartPole-v1", "--total-steps", "1024", "--workers", "1",
                 "--envs-per-worker", "4", "--steps-per-batch", "256", "--eval-every", "0",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"job_id", "env", "steps", "wall_s", "startup_s", "env_steps_per_s",
                            "final_return_mean", "best_return_mean", "checkpoint"}
    assert summary["steps"] == 1024 and summary["env"] == "CartPole-v1"
    saved = json.loads((out / "config.json").read_text())
    assert saved["a2c"]["steps_per_batch"] == 256 and saved["workers"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [256, 512, 768, 1024]

    ev = a2c("evaluate", summary["checkpoint"], "--episodes", "3", timeout=120)
    assert ev.returncode == 0, ev.stderr
    line = json.loads(ev.stdout.strip().splitlines()[-1])
    assert line["episodes"] == 3 and line["env"] == "CartPole-v1" and line["deterministic"] is True
    assert set(line) == {"checkpoint", "env", "episodes", "deterministic", "return_mean", "return_std"}
    assert "±" in ev.stderr and "sampled" not in ev.stderr
    sampled = a2c("evaluate", summary["checkpoint"], "--episodes", "3", "--stochastic", timeout=120)
    assert sampled.returncode == 0, sampled.stderr
    assert json.loads(sampled.stdout.strip().splitlines()[-1])["deterministic"] is False
    assert sampled.stderr.strip().endswith("over 3 episodes (sampled actions)")


def test_config_file_gives_the_spec_and_flags_override_it(tmp_path):
    from api.cli import build_parser
    from service.train import spec_from_args
    cfg = tmp_path / "job.yaml"
    cfg.write_text("env: Pendulum-v1\ntotal_steps: 5000\na2c:\n  gamma: 0.9\n  steps_per_batch: 160\n")
    args = build_parser().parse_args(["train", "--config", str(cfg), "--gamma", "0.95",
                                      "--mini-batch-size", "full", "--hidden-sizes", "32,32"])
    spec = spec_from_args(args)
    assert spec.env == "Pendulum-v1" and spec.total_steps == 5000
    assert spec.a2c.gamma == 0.95 and spec.a2c.steps_per_batch == 160
    assert spec.a2c.mini_batch_size is None and spec.policy.hidden_sizes == (32, 32)


def test_evaluate_refuses_a_tampered_archive(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"not an archive")
    result = a2c("evaluate", str(bad), timeout=60)
    assert result.returncode == 1 and "CheckpointRejected" in result.stderr


def test_sigint_stops_with_a_final_checkpoint_and_summary(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "train", "--env", "CartPole-v1",
                             "--total-steps", "50000000", "--workers", "1", "--envs-per-worker", "4",
                             "--steps-per-batch", "256", "--eval-every", "0", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr  # STOPPED: its own exit code, not success's 0 (docs/configuration.md)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "STOPPED" and summary["steps"] >= 3 * 256
    from learner.checkpoint import read_archive
    assert read_archive(summary["checkpoint"]).state.step == summary["steps"]


TINY = ["--env", "CartPole-v1", "--total-steps", "1024", "--workers", "1", "--envs-per-worker", "4",
        "--steps-per-batch", "256", "--eval-every", "0", "--checkpoint-every", "2"]


def test_train_writes_the_run_to_a_file_uri_storage_and_evaluate_reads_it_back(tmp_path):
    base = (tmp_path / "shared store").as_uri()  # file:///.../shared%20store
    result = a2c("train", *TINY, "--storage", base)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = tmp_path / "shared store" / summary["job_id"]
    assert summary["checkpoint"] == f"{base}/{summary['job_id']}/checkpoints/step-0000001024.tar.gz"
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert files == ["checkpoints/step-0000000512.tar.gz", "checkpoints/step-0000001024.tar.gz",
                     "config.json", "events.jsonl", "metrics.jsonl"]
    tensorboard = tmp_path / "shared store" / "tensorboard" / f"CartPole-v1-{summary['job_id']}"
    assert len(list(tensorboard.glob("events.out.tfevents.*"))) == 1  # a run named after the env and job
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [
        256, 512, 768, 1024]
    # A run directory as a URI: evaluate takes its newest archive.
    ev = a2c("evaluate", f"{base}/{summary['job_id']}", "--episodes", "2", timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.strip().splitlines()[-1])["checkpoint"] == summary["checkpoint"]


OBJECT_STORE_RUN = """
import contextlib, io, json
from service import storage
from api.cli import main

def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])

first = run("train", *TINY, "--storage", "memory://a2c-cli/runs")
resumed = run("train", "--resume", first["checkpoint"], "--total-steps", "1536", "--storage", "memory://a2c-cli/runs")
base = "memory://a2c-cli/runs/" + first["job_id"]
print(json.dumps({
    "first": first, "resumed": resumed, "files": storage.list_files(base),
    "tensorboard": storage.list_files("memory://a2c-cli/runs/tensorboard/CartPole-v1-" + first["job_id"]),
    "steps": [json.loads(l)["step"] for l in storage.read_bytes(base + "/metrics.jsonl").decode().splitlines()],
    "events": [json.loads(l)["kind"] for l in storage.read_bytes(base + "/events.jsonl").decode().splitlines()],
    "eval_dir": run("evaluate", base, "--episodes", "2"),
    "eval_archive": run("evaluate", resumed["checkpoint"], "--episodes", "2"),
}))
"""


def test_train_resume_and_evaluate_on_an_object_store_uri():
    """memory:// lives in one process, so train, resume and evaluate run in one (as `a2c` would)."""
    pytest.importorskip("fsspec")
    code = f"TINY = {TINY!r}\n{OBJECT_STORE_RUN}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    base = f"memory://a2c-cli/runs/{out['first']['job_id']}"
    tensorboard = f"memory://a2c-cli/runs/tensorboard/CartPole-v1-{out['first']['job_id']}/events.out.tfevents."
    assert [f.startswith(tensorboard) for f in out["tensorboard"]] == [True]  # flushed with the checkpoints
    assert out["files"] == [f"{base}/{name}" for name in (
        "checkpoints/step-0000000512.tar.gz", "checkpoints/step-0000001024.tar.gz",
        "config.json", "events.jsonl", "metrics.jsonl")]
    assert out["steps"] == [256, 512, 768, 1024] and "checkpoint" in out["events"]
    assert out["eval_dir"]["checkpoint"] == out["first"]["checkpoint"]
    assert out["resumed"]["steps"] == 1536
    assert out["resumed"]["checkpoint"].startswith(f"memory://a2c-cli/runs/{out['resumed']['job_id']}/")
    assert out["eval_archive"]["checkpoint"] == out["resumed"]["checkpoint"]


def test_out_and_storage_together_are_refused():
    result = a2c("train", "--env", "CartPole-v1", "--out", "x", "--storage", "y", timeout=60)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_storage_scheme_nothing_can_open_fails_before_ray_starts(tmp_path):
    result = a2c("train", "--env", "CartPole-v1", "--storage", "nosuchfs://bucket/runs", timeout=60)
    assert result.returncode == 1 and "StorageUnavailable" in result.stderr and "nosuchfs://" in result.stderr
    assert "[ray]" not in result.stderr


def _cartpole_run_dir(root) -> Path:
    """A run directory as `a2c train` leaves it, with two CartPole checkpoints (made without Ray)."""
    from learner.checkpoint import archive_bytes
    from learner.config import A2CConfig, PolicyConfig
    from learner.learner import Learner
    from learner.spaces import SpacesSpec

    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    a2c_config = A2CConfig(steps_per_batch=256)
    config = {"env": "CartPole-v1", "total_steps": 4096, "workers": 1, "envs_per_worker": 4,
              "eval_every": 0, "a2c": a2c_config.model_dump(mode="json"),
              "policy": PolicyConfig().model_dump(mode="json")}
    data = archive_bytes(Learner(spaces, PolicyConfig(), a2c_config, 4096, seed=0).state(), spaces,
                         "CartPole-v1", config)
    (root / "checkpoints").mkdir(parents=True)
    for name in ("step-0000000000.tar.gz", "step-0000000256.tar.gz"):
        (root / "checkpoints" / name).write_bytes(data)
    return root


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_resume_from_a_run_directory_takes_its_newest_checkpoint(tmp_path):
    run = _cartpole_run_dir(tmp_path / "runs" / "abc")
    result = a2c("train", "--resume", str(run), "--total-steps", "256", "--out", str(tmp_path / "next"))
    assert result.returncode == 0, result.stderr
    assert f"[resume] from {run}/checkpoints/step-0000000256.tar.gz" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "SUCCEEDED"


def test_resume_from_a_directory_without_checkpoints_says_what_to_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_line(a2c("train", "--resume", str(tmp_path / "empty"), timeout=60))
    assert "no checkpoint archive (*.tar.gz) under" in line and "pass an archive or a run directory" in line


def test_malformed_yaml_is_one_line_naming_file_line_and_problem(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("env: CartPole-v1\ntotal_steps: 1000\na2c: {gamma: 0.9\nworkers: 2\n")
    result = a2c("train", "--config", str(cfg), timeout=60)
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith(f"a2c: invalid job spec: config: {cfg}:4:") and "expected ',' or '}'" in line, line


def test_missing_config_file_is_named(tmp_path):
    line = _one_line(a2c("train", "--config", str(tmp_path / "nope.yaml"), timeout=60))
    assert line == f"a2c: invalid job spec: config: {tmp_path / 'nope.yaml'}: no such file"


def test_evaluate_on_an_env_with_other_spaces_says_how_they_differ(tmp_path):
    run = _cartpole_run_dir(tmp_path / "run")
    result = a2c("evaluate", str(run), "--env", "Acrobot-v1", "--episodes", "1", timeout=60)
    assert result.returncode == 2
    line = _one_line(result)
    assert "--env Acrobot-v1: its spaces differ from the checkpoint's (CartPole-v1)" in line
    assert "observations (6,) float32 here, (4,) float32 in the checkpoint" in line
    assert "3 discrete actions here, 2 discrete actions in the checkpoint" in line


def test_evaluate_tells_a_file_that_is_no_archive_from_a_missing_one(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    existing = _one_line(a2c("evaluate", str(notes), timeout=60))
    missing = _one_line(a2c("evaluate", str(tmp_path / "gone.tar.gz"), timeout=60))
    assert f"{notes} is not a usable checkpoint archive: not a readable .tar.gz archive" in existing
    assert missing == f"a2c: FileNotFoundError: {tmp_path / 'gone.tar.gz'}: no such file or directory"


def test_a_box2d_env_without_box2d_gets_the_pip_command_not_env_kwargs(tmp_path):
    code = ("import sys; sys.modules['Box2D'] = None\n"  # as if Box2D were not installed
            "from api.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "train", "--env", "LunarLander-v3", "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith("a2c: invalid job spec: env: ") and 'pip install "gymnasium[box2d]"' in line
    assert "env_kwargs" not in line


def test_every_invalid_field_is_shown_not_only_the_first(tmp_path):
    result = a2c("train", "--env", "CartPole-v1", "--learning-rate", "-1", "--gamma", "2", "--workers", "0",
                 "--out", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    fields = [line.split(": ")[2] for line in result.stderr.strip().splitlines()]
    assert sorted(fields) == ["a2c.gamma", "a2c.learning_rate", "workers"], result.stderr


def test_a_mistyped_env_id_gets_a_did_you_mean(tmp_path):
    line = _one_line(a2c("train", "--env", "cartpole-v1", "--out", str(tmp_path / "run"), timeout=60))
    assert "env 'cartpole-v1' is not a registered gymnasium env (did you mean 'CartPole-v1'?)" in line


def test_a_mistyped_flag_gets_the_subcommands_usage_and_a_did_you_mean():
    result = a2c("train", "--env", "CartPole-v1", "--totl-steps", "5000", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: a2c train")
    assert "unrecognized arguments: --totl-steps 5000; --totl-steps: did you mean --total-steps?" in result.stderr


def test_bare_a2c_prints_its_help_and_exits_0():
    result = a2c(timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: a2c") and "train" in result.stdout and "serve" in result.stdout


def test_version():
    from importlib.metadata import version
    result = a2c("--version", timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"a2c {version('a2c-service')}"


def test_train_help_shows_defaults_choices_the_required_env_and_boolean_pairs():
    out = a2c("train", "--help", timeout=60).stdout
    flat = " ".join(out.split())  # help text is wrapped
    assert out.startswith("usage: a2c train --env ID [options]")
    assert "--env ID required (unless --config or --resume gives it)" in flat
    assert "--total-steps N Env steps to train for (over all workers and envs). (default: 100000)" in flat
    assert "--workers N Rollout worker actors (1 CPU each). (default: 2)" in flat
    assert "--mode {sync,async}" in flat and "--learner-device {auto,cpu,cuda}" in flat
    assert "--optimizer {adam,rmsprop,rmsprop_tf}" in flat
    assert "--normalize-advantages, --no-normalize-advantages" in flat and "--tuned, --no-tuned" in flat
    assert "(default: 2048)" in flat and "tuned table" in flat


@pytest.mark.parametrize("flags,value", [([], None), (["--normalize-advantages"], True),
                                         (["--no-normalize-advantages"], False),
                                         (["--normalize-advantages", "true"], True),
                                         (["--normalize-advantages", "no"], False)])
def test_booleans_are_flags_and_still_take_true_or_false(flags, value):
    from api.cli import build_parser
    args = build_parser().parse_args(["train", "--env", "CartPole-v1", *flags])
    assert getattr(args, "a2c.normalize_advantages") is value


@pytest.mark.parametrize("command,flags", [("evaluate", ["--episodes", "--env", "--seed", "ARCHIVE_OR_DIR"]),
                                           ("serve", ["--host", "--port", "--data-dir", "--address", "--storage"])])
def test_evaluate_and_serve_explain_every_flag(command, flags):
    from api.cli import build_parser
    parser = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    sub = parser.choices[command]
    assert sub.description
    helps = {(a.option_strings or [a.metavar])[0]: a.help for a in sub._actions}
    assert all(helps.get(flag) for flag in flags), helps


def test_serve_on_a_busy_port_fails_at_once_before_ray_starts(tmp_path):
    import socket
    import time
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        result = a2c("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), timeout=120)
        elapsed = time.monotonic() - t0
    assert result.returncode == 3
    assert _one_line(result) == (f"a2c serve: port {port} on 127.0.0.1 is already in use (another `a2c serve`?): "
                                 "stop it, or pass --port with a free port")
    assert not (tmp_path / "data").exists()  # no Ray, no store: nothing was started
    assert elapsed < 10, elapsed  # the interpreter and the parser; Ray's start-up alone takes longer


def test_the_server_and_its_app_import_without_torch(tmp_path):
    # `a2c serve` needs torch only once a job is submitted (its spec checks); tensorboardX, whose
    # package imports torch when installed, is imported at a job's first TensorBoard row.
    code = ("import sys\nfrom api.server import serve\nfrom api.app import create_app\n"
            "from api.config import Settings\n"
            f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
            "print(sorted(m for m in ('torch', 'tensorboardX') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_name_and_tags_flags_go_into_the_spec():
    from api.cli import build_parser
    from service.train import spec_from_args
    args = build_parser().parse_args(["train", "--env", "CartPole-v1", "--name", "base line", "--tags", "x,y"])
    spec = spec_from_args(args)
    assert spec.name == "base line" and spec.tags == ("x", "y")


def test_an_archived_spec_with_a_renamed_field_resumes_under_the_new_name():
    # Archives of the day learner_precision existed: a resumed job keeps their precision.
    from api.cli import build_parser
    from service.run.spec import archived_spec
    from service.train import spec_from_args
    args = build_parser().parse_args(["train", "--total-steps", "2000"])
    spec = spec_from_args(args, base=archived_spec({"env": "PongNoFrameskip-v4", "learner_precision": "bfloat16"}))
    assert spec.cnn_precision == "bfloat16" and spec.total_steps == 2000
    # Archives from before the field: float32, as they trained (the default is auto since).
    older = spec_from_args(args, base=archived_spec({"env": "PongNoFrameskip-v4"}))
    assert older.cnn_precision == "float32"
