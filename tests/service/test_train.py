"""What `a2c train` shows and writes as it goes: progress on stderr (a tqdm bar on a terminal,
plain lines otherwise) and TensorBoard event files in `<runs>/tensorboard/<env>-[<name>-]<job id>/`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from service import train
from service.train import ConsoleSink
from service.run.tensorboard_log import TensorBoardLog


def rows(n: int) -> list[dict]:
    return [{"step": 256 * i, "env_steps_per_s": 1000.0 + i, "episode_return_mean": 10.0 + i,
             "policy_loss": -0.5 * i, "loss": None, "weights_version": i} for i in range(1, n + 1)]


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the event files under `log_dir`, read by TensorBoard."""
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_plain_lines_show_step_of_total_return_and_sps_when_not_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "_is_terminal", lambda: False)
    sink = ConsoleSink(tmp_path, total_steps=1024)
    for row in rows(3):
        sink.metrics(row)
    sink.metrics({**rows(4)[-1], "eval_return_mean": 50.0})  # eval rows always print
    sink.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "step 256/1024 return 11.0 sps 1001"
    assert lines[-1] == "step 1024/1024 return 14.0 eval 50.0 sps 1004"
    assert "\r" not in "".join(lines)  # no bar redraws in logs


def test_progress_bar_shows_steps_return_and_one_speed_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "_is_terminal", lambda: True)
    sink = ConsoleSink(tmp_path, total_steps=1024)
    for row in rows(2):
        sink.metrics(row)
    sink.close()
    err = capsys.readouterr().err
    assert "512/1.02k" in err and "return 12.0" in err
    assert "env steps/s" in err and "sps" not in err  # one speed: tqdm's, in env steps/s


def test_terminal_prints_an_eval_line_at_each_evaluation(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "_is_terminal", lambda: True)
    sink = ConsoleSink(tmp_path, total_steps=1024)
    sink.metrics(rows(1)[0])
    sink.metrics({**rows(2)[-1], "eval_return_mean": 87.25})
    sink.close()
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert "step 512: eval/mean_reward 87.25" in lines
    assert sum("eval/mean_reward" in line for line in lines) == 1


def test_bar_ends_at_100_percent_when_the_last_batch_overshoots_total_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "_is_terminal", lambda: True)
    sink = ConsoleSink(tmp_path, total_steps=1000, end_step=1024)
    for row in rows(4):
        sink.metrics(row)
    sink.close()
    last = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert last.lstrip().startswith("100%") and "1.02k/1.02k" in last


def test_bar_clock_starts_with_the_training_loop_not_with_ray(tmp_path, capsys, monkeypatch):
    import time
    monkeypatch.setattr(train, "_is_terminal", lambda: True)
    sink = ConsoleSink(tmp_path, total_steps=1024)
    time.sleep(1.2)  # Ray starting, actors being placed
    sink.event("started", "1 worker x 4 envs")
    sink.metrics(rows(1)[0])
    sink.close()
    bar = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "256/1.02k" in line]
    assert bar and "[00:00<" in bar[-1], bar


BAR_ON_A_PTY = """
import sys
from service.train import ConsoleSink
sink = ConsoleSink(sys.argv[1], total_steps=1024)
for i in range(1, 5):
    sink.metrics({"step": 256 * i, "env_steps_per_s": 1000.0, "episode_return_mean": 10.0 + i})
sink.close()
"""


@pytest.mark.parametrize("columns", [0, 120])
def test_bar_draws_on_a_real_terminal_even_one_that_reports_no_width(tmp_path, columns):
    """A pty whose size was never set reports 0 columns (`script`, `docker exec`): tqdm sized to
    it drew nothing, not even 100%."""
    import fcntl
    import pty
    import struct
    import termios

    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 0 if not columns else 40, columns, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-c", BAR_ON_A_PTY, str(tmp_path)], stderr=child_fd,
                                cwd=Path(__file__).parents[2], env={**os.environ, "TERM": "xterm"})
        os.close(child_fd)
        out = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the child side closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-2000:]
    finally:
        os.close(main_fd)
    last = out.decode(errors="replace").replace("\r", "\n").split("\n")
    bars = [line for line in last if "1.02k/1.02k" in line]
    assert bars and bars[-1].lstrip().startswith("100%") and "return 14.0" in bars[-1], out[-600:]
    assert all(len(line.rstrip()) <= (columns or train.BAR_SIZE_IF_UNKNOWN[0]) for line in last), last


def test_console_sink_writes_the_rows_to_tensorboard_under_their_metric_names(tmp_path, monkeypatch):
    from service.run.spec import build_spec
    monkeypatch.setattr(train, "_is_terminal", lambda: False)
    spec = build_spec({"env": "ALE/Pong-v5", "name": "first try"}).model_dump(mode="json")
    sink = ConsoleSink(str(tmp_path / "runs" / "0123456789ab"), total_steps=1024, spec=spec,
                       job_id="0123456789ab", root=str(tmp_path / "runs"))
    for row in rows(3):
        sink.metrics(row)
    sink.close()
    run = tmp_path / "runs" / "tensorboard" / "ALE-Pong-v5-first-try-0123456789ab"  # TensorBoard's run name
    scalars = read_scalars(run)
    assert set(scalars) == {"env_steps_per_s", "episode_return_mean", "policy_loss", "weights_version"}
    assert scalars["episode_return_mean"] == {256: 11.0, 512: 12.0, 768: 13.0}
    assert scalars["policy_loss"] == {256: -0.5, 512: -1.0, 768: -1.5}


def test_a_second_log_in_the_same_dir_continues_the_series_and_replaces_rewritten_steps(tmp_path):
    """As after a restart from a checkpoint at step 512: rows past it are trained again."""
    first = TensorBoardLog(tmp_path)
    for row in rows(3):
        first.write(row)
    second = TensorBoardLog(tmp_path)
    second.write({"step": 768, "episode_return_mean": 99.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(first.location).name, Path(second.location).name])
    assert Path(first.location).name < Path(second.location).name  # readers take files in name order
    assert read_scalars(tmp_path)["episode_return_mean"] == {256: 11.0, 512: 12.0, 768: 99.0}


def test_nan_inf_none_and_bools_are_not_logged(tmp_path):
    log = TensorBoardLog(tmp_path)
    log.write({"step": 1, "a": float("nan"), "b": float("inf"), "c": None, "d": True, "e": 2})
    assert read_scalars(tmp_path) == {"e": {1: 2.0}}


@pytest.mark.ray
def test_a2c_train_prints_plain_progress_and_logs_tensorboard_in_a_run_named_after_env_and_id(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "train", "--env", "CartPole-v1", "--total-steps", "1024",
         "--workers", "1", "--envs-per-worker", "4", "--steps-per-batch", "256", "--eval-every", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = tmp_path / "runs" / summary["job_id"]
    progress = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert progress and progress[0].startswith("step 256/1024 return ") and " sps " in progress[0]
    assert progress[-1].startswith("step 1024/1024 ") and " eval " in progress[-1]
    rows_written = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(tmp_path / "runs" / "tensorboard" / f"CartPole-v1-{summary['job_id']}")
    assert scalars["episode_return_mean"] == pytest.approx(
        {r["step"]: r["episode_return_mean"] for r in rows_written if r["episode_return_mean"] is not None})
    assert scalars["eval_return_mean"] == pytest.approx({1024: rows_written[-1]["eval_return_mean"]})


RAY_COPY = Path("/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_0123")
"""Where `ray job submit --working-dir` runs the driver: Ray's unpacked copy of the package."""


def test_runs_go_to_runs_in_the_working_directory_by_default():
    assert train.run_location(None, None, "abc", cwd=Path("/home/me/project")) == "runs/abc"
    assert train.run_location(None, "s3://b/p", "abc", cwd=RAY_COPY) == "s3://b/p/abc"
    assert train.run_location("/data/x", None, "abc", cwd=RAY_COPY) == "/data/x"


def test_under_ray_job_submit_runs_default_to_a2c_runs_in_home_not_rays_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert train.run_location(None, None, "abc", cwd=RAY_COPY) == str(tmp_path / "a2c-runs" / "abc")


@pytest.mark.parametrize("flag", ["out", "storage"])
def test_under_ray_job_submit_a_relative_run_path_is_refused_naming_the_flag(flag):
    given = {"out": None, "storage": None, flag: "runs"}
    with pytest.raises(train.InvalidSpec) as err:
        train.run_location(given["out"], given["storage"], "abc", cwd=RAY_COPY)
    assert err.value.field == flag and "absolute path or a URI" in err.value.message


def test_a_driver_run_from_rays_copy_loads_every_module_before_ray_can_replace_the_copy():
    """The multi-node `ray job submit` test failed on `No module named 'service.run.tracking'`:
    a lazy import while Ray unpacked the working dir again over the driver's copy."""
    assert train.in_ray_package(RAY_COPY) and not train.in_ray_package(Path("/home/me/project"))
    code = ("import sys; from service.train import preload_modules; skipped = preload_modules(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'learner', 'workers')), skipped)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout
    for module in ("service.run.tracking", "service.run.videos", "service.run.tensorboard_log",
                   "service.serving", "learner.export", "workers.video", "workers.atari"):
        assert f"'{module}'" in out, out


def test_the_run_s_hyperparameters_are_in_tensorboard_s_hparams_tab(tmp_path):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from service.run.spec import build_spec
    spec = build_spec({"env": "CartPole-v1", "name": "lr sweep", "tags": ["a", "b"], "seed": 5})
    log = TensorBoardLog(tmp_path, hparams=spec.model_dump(mode="json"))
    log.write({"step": 256, "episode_return_mean": 20.0})
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["seed"].number_value == 5 and start["env"].string_value == "CartPole-v1"
    assert start["name"].string_value == "lr sweep" and start["tags"].string_value == "a,b"
    assert start["a2c.learning_rate"].number_value == pytest.approx(spec.a2c.learning_rate)
    assert start["policy.hidden_sizes"].string_value == "64,64"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"episode_return_mean", "eval_return_mean"}
    assert read_scalars(tmp_path)["episode_return_mean"] == {256: 20.0}
