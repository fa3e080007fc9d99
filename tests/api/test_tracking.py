"""A server job with `tracking`: its W&B run (offline) and MLflow run (a file store) get the job's
spec, every metrics row and every checkpoint archive, and its TensorBoard run is named after its
env, name and id. The shared server's trackers log under `server.tracking_dir`."""

from __future__ import annotations

import json
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_a_server_job_logs_to_wandb_and_mlflow_and_names_its_tensorboard_run(client, server, small_job,
                                                                             wandb_records, monkeypatch):
    job = {**small_job, "total_steps": 5120, "checkpoint_every": 4, "name": "tracked run",
           "tags": ["tracking"], "tracking": ["wandb", "mlflow"]}
    post = client.post("/jobs", json=job)
    assert post.status_code == 201, post.text
    job_id = post.json()["id"]
    done = client.wait_finished(job_id)
    assert done["status"] == "SUCCEEDED", done
    assert done["spec"]["tracking"] == ["wandb", "mlflow"]
    kinds = [e["kind"] for e in done["events"]]
    assert kinds.count("tracking") == 2 and "tracking_failed" not in kinds, done["events"]
    rows = client.all_metrics(job_id)
    checkpoints = [c["id"] for c in client.get(f"/jobs/{job_id}/checkpoints").raise_for_status().json()["checkpoints"]]
    assert len(rows) == 10 and len(checkpoints) >= 3

    name = f"CartPole-v1-tracked-run-{job_id}"
    acc = EventAccumulator(str(server.data_dir / "tensorboard" / name))
    acc.Reload()
    assert [e.step for e in acc.Scalars("episode_return_mean")] == [
        r["step"] for r in rows if r["episode_return_mean"] is not None]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")

    run_dir, = (server.tracking_dir / "wandb" / "wandb").glob(f"offline-run-*-{job_id}")
    deadline = time.monotonic() + 30  # the server's W&B service writes the file just after finish
    while True:
        records = wandb_records(run_dir)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == name and run.project == "a2c-tests"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["name"] == "tracked run" and config["total_steps"] == 5120
    history = [{item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
                for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["step"] for h in history] == [r["step"] for r in rows]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [a.manifest.contents[0].path for a in artifacts] == [f"{c}.tar.gz" for c in sorted(checkpoints)]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (server.tracking_dir / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    mlflow = MlflowClient()
    experiment = mlflow.get_experiment_by_name("a2c-tests")
    found, = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`a2c.job_id` = '{job_id}'")
    assert found.info.run_name == name and found.info.status == "FINISHED"
    assert found.data.params["name"] == "tracked run"
    assert [m.step for m in mlflow.get_metric_history(found.info.run_id, "policy_loss")] == [r["step"] for r in rows]
    assert sorted(a.path for a in mlflow.list_artifacts(found.info.run_id, "checkpoints")) == [
        f"checkpoints/{c}.tar.gz" for c in sorted(checkpoints)]


@pytest.mark.parametrize("tracking, field, says", [
    (["comet"], "tracking.0", "Input should be 'wandb' or 'mlflow'"),
    ("wandb", "tracking", "Input should be a valid"),
])
def test_an_unknown_tracker_is_refused_with_422_naming_the_field(client, small_job, tracking, field, says):
    response = client.post("/jobs", json={**small_job, "tracking": tracking})
    assert response.status_code == 422, response.text
    assert any([str(part) for part in problem["loc"]] == ["body", *field.split(".")] and says in problem["msg"]
               for problem in response.json()["detail"]), response.text
