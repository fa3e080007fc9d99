"""Experiment tracking: W&B (offline) and MLflow (a file store) get a job's spec, metrics rows and
checkpoint archives; a missing package or setting is refused naming `tracking` and the fix; a
tracker failing mid-run is an event, and training goes on. No network: W&B runs offline,
MLflow writes to tmp_path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from service.run import tracking
from service.run.sinks import CheckpointInfo
from service.run.spec import InvalidSpec, build_spec
from service.run.tracking import Tracking, run_name


@pytest.fixture(autouse=True)
def fresh_wandb():
    """W&B keeps the settings it first read for the life of the process: reset them after each test."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


def offline_env(monkeypatch, tmp_path: Path) -> None:
    """W&B offline and MLflow on a file store, everything under tmp_path."""
    for var, sub in (("WANDB_DIR", "wandb-dir"), ("WANDB_DATA_DIR", "wandb-data"),
                     ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config")):
        (tmp_path / sub).mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


ROWS = [{"step": 256 * i, "episode_return_mean": 10.0 + i, "policy_loss": -0.5 * i, "loss": None,
         "eval_return_mean": float("nan")} for i in range(1, 4)]


def run_a_job(tmp_path: Path, trackers: list[str], name: str | None = "lr sweep") -> tuple[dict, list, Path]:
    """A spec, three rows and a checkpoint through Tracking: (spec, events reported, archive)."""
    spec = build_spec({"env": "CartPole-v1", "name": name, "tags": ["baseline"], "tracking": trackers,
                       "seed": 7}).model_dump(mode="json")
    archive = tmp_path / "job" / "checkpoints" / "step-0000000768.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"not really a tar.gz" * 100)
    events: list[tuple[str, str]] = []
    sink = Tracking(spec, "0123456789ab", str(tmp_path / "data"), lambda kind, msg: events.append((kind, msg)))
    for row in ROWS:
        sink.metrics(row)
    sink.checkpoint(CheckpointInfo("step-0000000768", str(archive), 768, 13.0, archive.stat().st_size, 0.0, 42.0))
    sink.close("SUCCEEDED", timeout=120)
    return spec, events, archive


def test_runs_are_named_env_name_id_with_slashes_and_spaces_replaced():
    assert run_name("CartPole-v1", None, "0123456789ab") == "CartPole-v1-0123456789ab"
    assert run_name("ALE/Pong-v5", "lr sweep 1", "0123456789ab") == "ALE-Pong-v5-lr-sweep-1-0123456789ab"


def test_wandb_offline_run_holds_the_config_the_metrics_history_and_the_checkpoint_artifact(tmp_path, monkeypatch,
                                                                                        wandb_records):
    offline_env(monkeypatch, tmp_path)
    spec, events, archive = run_a_job(tmp_path, ["wandb"])
    assert [kind for kind, _ in events] == ["tracking"], events
    assert "W&B run CartPole-v1-lr-sweep-0123456789ab: offline in" in events[0][1]
    run_dir, = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*-0123456789ab")
    records = wandb_records(run_dir)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_id == "0123456789ab" and run.display_name == "CartPole-v1-lr-sweep-0123456789ab"
    assert run.project == "a2c-service" and list(run.tags) == ["baseline"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["seed"] == 7 and config["a2c"]["learning_rate"] == spec["a2c"]["learning_rate"]
    assert config["tracking"] == ["wandb"]
    history = [{item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
                for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["step"], h["episode_return_mean"], h["policy_loss"]) for h in history] == [
        (r["step"], r["episode_return_mean"], r["policy_loss"]) for r in ROWS]
    assert not {"loss", "eval_return_mean"} & set(history[0])  # None and NaN are not logged
    artifact = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert artifact.name == "model-0123456789ab" and artifact.type == "model"
    assert set(artifact.aliases) >= {"latest", "step-0000000768"}
    assert json.loads(artifact.metadata) == {"step": 768, "return_mean": 13.0, "eval_return_mean": 42.0}
    entry, = artifact.manifest.contents
    assert entry.path == "step-0000000768.tar.gz" and entry.size == archive.stat().st_size
    assert Path(entry.local_path).read_bytes() == archive.read_bytes()  # W&B's staged copy
    exit_record = next(r.exit for r in records if r.WhichOneof("record_type") == "exit")
    assert exit_record.exit_code == 0


def test_mlflow_run_holds_the_params_the_metric_history_and_the_checkpoint_artifact(tmp_path, monkeypatch):
    offline_env(monkeypatch, tmp_path)
    spec, events, archive = run_a_job(tmp_path, ["mlflow"])
    assert [kind for kind, _ in events] == ["tracking"], events
    from mlflow.tracking import MlflowClient
    client = MlflowClient()
    experiment = client.get_experiment_by_name("a2c-service")
    run, = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "CartPole-v1-lr-sweep-0123456789ab" and run.info.status == "FINISHED"
    assert run.data.tags["a2c.job_id"] == "0123456789ab" and run.data.tags["a2c.status"] == "SUCCEEDED"
    params = run.data.params
    assert params["seed"] == "7" and params["env"] == "CartPole-v1" and params["name"] == "lr sweep"
    assert float(params["a2c.learning_rate"]) == spec["a2c"]["learning_rate"]
    assert "tracking" not in params
    history = client.get_metric_history(run.info.run_id, "episode_return_mean")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["episode_return_mean"]) for r in ROWS]
    assert "loss" not in run.data.metrics and "eval_return_mean" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/step-0000000768.tar.gz"]
    downloaded = client.download_artifacts(run.info.run_id, "checkpoints/step-0000000768.tar.gz", str(tmp_path))
    assert Path(downloaded).read_bytes() == archive.read_bytes()
    config = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(config).read_text()) == spec


def test_a_job_resumed_under_the_same_id_continues_its_mlflow_run(tmp_path, monkeypatch):
    offline_env(monkeypatch, tmp_path)
    spec = build_spec({"env": "CartPole-v1", "tracking": ["mlflow"]}).model_dump(mode="json")
    for rows, status in ((ROWS[:2], "PENDING"), (ROWS[2:], "SUCCEEDED")):  # paused, then resumed
        sink = Tracking(spec, "0123456789ab", None, lambda kind, msg: None)
        for row in rows:
            sink.metrics(row)
        sink.close(status)
    from mlflow.tracking import MlflowClient
    client = MlflowClient()
    run, = client.search_runs([client.get_experiment_by_name("a2c-service").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "policy_loss")] == [256, 512, 768]


def test_a_tracker_that_fails_mid_run_is_one_event_and_the_others_carry_on(tmp_path, monkeypatch, wandb_records):
    offline_env(monkeypatch, tmp_path)

    def network_down(self, row):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(tracking.MlflowTracker, "metrics", network_down)
    _, events, _ = run_a_job(tmp_path, ["wandb", "mlflow"])
    failed = [msg for kind, msg in events if kind == "tracking_failed"]
    assert failed == ["MLflow failed at metrics: ConnectionError: tracking server unreachable; "
                      "training goes on without it"]
    assert sum(kind == "tracking" for kind, _ in events) == 2  # both runs opened
    run_dir, = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*")
    kinds = [r.WhichOneof("record_type") for r in wandb_records(run_dir)]
    assert kinds.count("history") == 3 and "artifact" in kinds  # W&B got everything


def test_a_tracker_that_hangs_does_not_hold_up_the_sink_and_is_reported_at_close(tmp_path, monkeypatch):
    import threading
    import time
    offline_env(monkeypatch, tmp_path)
    release = threading.Event()
    monkeypatch.setattr(tracking.MlflowTracker, "start", lambda self: release.wait(30) and "")
    spec = build_spec({"env": "CartPole-v1", "tracking": ["mlflow"]}).model_dump(mode="json")
    events: list[tuple[str, str]] = []
    sink = Tracking(spec, "0123456789ab", None, lambda kind, msg: events.append((kind, msg)))
    began = time.monotonic()
    for _ in range(100):
        sink.metrics(ROWS[0])
    assert time.monotonic() - began < 1.0
    sink.close("SUCCEEDED", timeout=0.5)
    release.set()
    assert events == [("tracking_failed", "MLflow had not finished 0s after the job ended; the last "
                       "records may be missing there")]


def test_asking_for_a_tracker_that_is_not_installed_names_the_field_and_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "CartPole-v1", "tracking": ["wandb"]}, strict=True)
    assert err.value.problems == [("tracking", "wandb is not installed here: pip install 'a2c-service[wandb]'")]


def test_mlflow_without_a_tracking_uri_is_refused_with_what_to_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "CartPole-v1", "tracking": ["mlflow"]})
    assert err.value.field == "tracking" and "MLFLOW_TRACKING_URI" in err.value.message


def test_an_unknown_tracker_is_refused_naming_the_choices():
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "CartPole-v1", "tracking": ["comet"]})
    assert err.value.problems == [("tracking.0", "Input should be 'wandb' or 'mlflow'")]


def test_no_tracker_is_imported_until_a_job_asks_for_one():
    import subprocess
    code = ("import sys; from service.train import ConsoleSink; from service.jobs.sink import StoreSink; "
            "from service.run.spec import build_spec; build_spec({'env': 'CartPole-v1'}); "
            "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[3])
    assert result.stdout.strip() == "[]", result.stderr


def test_a2c_train_asking_for_a_missing_tracker_fails_before_ray_starts_with_the_pip_command(monkeypatch, capsys):
    import service.cluster
    from service import train
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    monkeypatch.setattr(service.cluster, "connect_in_background", lambda *a, **k: pytest.fail("Ray was started"))
    assert train.main(["--env", "CartPole-v1", "--tracking", "mlflow,wandb"]) == train.EXIT_INVALID
    err = capsys.readouterr().err.strip()
    assert err.startswith("a2c: invalid job spec: tracking: ") and err.count("\n") == 0
    assert "wandb is not installed here: pip install 'a2c-service[wandb]'" in err


@pytest.mark.ray
def test_a2c_train_logs_its_run_to_wandb_and_mlflow(tmp_path, wandb_records, monkeypatch):
    import os
    import subprocess
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WANDB_", "MLFLOW_"))}
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_DATA_DIR": str(tmp_path / "wd"),
                "WANDB_CACHE_DIR": str(tmp_path / "wc"), "WANDB_CONFIG_DIR": str(tmp_path / "wcfg"),
                "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true",
                "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "train", "--env", "CartPole-v1", "--total-steps", "1024", "--workers", "1",
         "--envs-per-worker", "4", "--steps-per-batch", "256", "--eval-every", "0", "--checkpoint-every", "2",
         "--name", "cli", "--tracking", "wandb,mlflow"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # stdout is still only the summary
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout
    job_id, name = summary["job_id"], f"CartPole-v1-cli-{summary['job_id']}"
    events = [json.loads(line) for line in (tmp_path / "runs" / job_id / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("tracking") == 2
    assert not [e for e in events if e["kind"] == "tracking_failed"], events
    assert list((tmp_path / "runs" / "tensorboard" / name).glob("events.out.tfevents.*"))

    run_dir, = (tmp_path / "wandb-dir" / "wandb").glob(f"offline-run-*-{job_id}")
    records = wandb_records(run_dir)
    history = [r for r in records if r.WhichOneof("record_type") == "history"]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert len(history) == 4
    assert [a.manifest.contents[0].path for a in artifacts] == ["step-0000000512.tar.gz", "step-0000001024.tar.gz"]

    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run, = client.search_runs([client.get_experiment_by_name("a2c-service").experiment_id])
    assert run.info.run_name == name and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "episode_return_mean")] == [256, 512, 768, 1024]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/step-0000000512.tar.gz", "checkpoints/step-0000001024.tar.gz"]
