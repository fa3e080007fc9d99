"""The `a2c` command as a user runs it, in a subprocess (CleanRL-style smoke tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def a2c(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("flags,field", [
    (["--env", "NoSuchEnv-v0"], "env"),
    (["--env", "some.module:Env"], "env"),
    (["--env", "CartPole-v1", "--learning-rate", "-0.1"], "a2c.learning_rate"),
    (["--env", "CartPole-v1", "--workers", "3", "--steps-per-batch", "100"], "steps_per_batch"),
])
def test_bad_spec_fails_before_ray_starts_and_names_the_field(flags, field, tmp_path):
    result = a2c("train", *flags, "--out", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"invalid job spec: {field}" in result.stderr or field in result.stderr
    assert "[ray]" not in result.stderr  # no Ray was started, so no actor either
    assert result.stdout == ""


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
    assert line["episodes"] == 3 and line["env"] == "CartPole-v1"
    assert set(line) == {"checkpoint", "env", "episodes", "return_mean", "return_std"}
    assert "±" in ev.stderr


def test_config_file_gives_the_spec_and_flags_override_it(tmp_path):
    from service.cli import build_parser, spec_from_args
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
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "train", "--env", "CartPole-v1",
                             "--total-steps", "50000000", "--workers", "1", "--envs-per-worker", "4",
                             "--steps-per-batch", "256", "--eval-every", "0", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "STOPPED" and summary["steps"] >= 3 * 256
    from learner.checkpoint import read_archive
    assert read_archive(summary["checkpoint"]).state.step == summary["steps"]
