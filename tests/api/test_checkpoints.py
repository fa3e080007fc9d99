"""/jobs/{id}/checkpoints and archive downloads on a real server; `a2c evaluate` loads them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from learner.checkpoint import read_archive

from tests.api.conftest import start_server


def test_checkpoints_are_listed_in_step_order_with_sizes(client, finished_job):
    listed = client.get(f"/jobs/{finished_job['id']}/checkpoints").json()
    assert listed["job_id"] == finished_job["id"]
    steps = [c["step"] for c in listed["checkpoints"]]
    assert steps == [5120, 10240, 15360, 20480]  # every 10 updates, the last at the end
    for c in listed["checkpoints"]:
        assert c["id"] == f"step-{c['step']:010d}" and c["size_bytes"] > 0
        assert c["archive_url"] == f"/jobs/{finished_job['id']}/checkpoints/{c['id']}/archive"
        assert c["return_mean"] is not None


def test_latest_archive_downloads_with_a_server_made_file_name(client, finished_job, tmp_path):
    job_id = finished_job["id"]
    r = client.get(f"/jobs/{job_id}/checkpoints/latest/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-step-0000020480.tar.gz"'
    ckpt = read_archive(r.content)
    assert ckpt.env_id == "CartPole-v1" and ckpt.state.step == 20_480
    assert ckpt.manifest["job_id"] == job_id
    by_id = client.get(f"/jobs/{job_id}/checkpoints/step-0000005120/archive")
    assert read_archive(by_id.content).state.step == 5120


def test_downloaded_archive_loads_with_a2c_evaluate(client, finished_job, tmp_path):
    path = tmp_path / "latest.tar.gz"
    path.write_bytes(client.get(f"/jobs/{finished_job['id']}/checkpoints/latest/archive").content)
    out = subprocess.run([sys.executable, "-m", "api.cli", "evaluate", str(path), "--episodes", "2"],
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["env"] == "CartPole-v1" and result["episodes"] == 2 and result["return_mean"] > 0


def test_the_list_shows_eval_returns_and_marks_the_best_which_downloads_as_best(client, finished_job):
    job_id = finished_job["id"]
    listed = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
    # eval_every 0: only the end is evaluated, so the final checkpoint is the only (and best) evaluated one.
    assert [c["eval_return_mean"] is not None for c in listed] == [False, False, False, True]
    assert [c["best"] for c in listed] == [False, False, False, True]
    final_eval = finished_job["job"]["summary"]["final_eval_return_mean"]
    assert listed[-1]["eval_return_mean"] == final_eval == finished_job["job"]["summary"]["best_eval_return_mean"]
    assert finished_job["job"]["summary"]["best_checkpoint"] == finished_job["job"]["summary"]["checkpoint"] \
        == "step-0000020480"
    r = client.get(f"/jobs/{job_id}/checkpoints/best/archive")
    assert r.status_code == 200
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-step-0000020480.tar.gz"'
    assert read_archive(r.content).manifest["eval_return_mean"] == final_eval


def test_best_before_any_evaluation_is_404_and_resume_from_it_422_then_both_work(client, long_job):
    job_id = client.post("/jobs", json={**long_job, "eval_every": 0}).raise_for_status().json()["id"]
    try:
        client.wait_for(job_id, lambda j: j["status"] == "RUNNING" and j["progress"]["step"] >= 6 * 512)
        assert client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]  # checkpointed, not evaluated
        r = client.get(f"/jobs/{job_id}/checkpoints/best/archive")
        assert r.status_code == 404 and "no evaluated checkpoint yet" in r.json()["detail"], r.text
        r = client.post("/jobs", json={"resume_from": {"job_id": job_id, "checkpoint": "best"}})
        assert r.status_code == 422, r.text
        error = r.json()["detail"][0]
        assert error["loc"][:3] == ["body", "resume_from", "checkpoint"] and "no evaluated checkpoint" in error["msg"]
    finally:
        client.post(f"/jobs/{job_id}/stop")
    job = client.wait_finished(job_id)  # a stop evaluates the final policy: now there is a best
    best = next(c for c in client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"] if c["best"])
    assert best["id"] == job["summary"]["best_checkpoint"]
    resumed = client.post("/jobs", json={"resume_from": {"job_id": job_id, "checkpoint": "best"},
                                         "total_steps": best["step"] + 512})
    assert resumed.status_code == 201, resumed.text
    assert resumed.json()["resumed_from"] == {"job_id": job_id, "checkpoint": best["id"]}
    assert client.wait_finished(resumed.json()["id"])["progress"]["step"] == best["step"] + 512


def test_export_gives_an_onnx_model_whose_actions_are_the_checkpoints(client, finished_job):
    import numpy as np
    import onnxruntime as ort

    from learner.policy import obs_tensor
    job_id = finished_job["id"]
    archive = read_archive(client.get(f"/jobs/{job_id}/checkpoints/best/archive").content)
    policy = archive.policy()
    obs = (np.random.default_rng(0).normal(size=(1000, 4)) * [1.0, 1.5, 0.15, 1.5]).astype(np.float32)
    expected = policy.act(obs_tensor(obs, policy.spaces), deterministic=True)[0].numpy()
    for ckpt in ("best", "latest", "step-0000020480"):
        r = client.get(f"/jobs/{job_id}/checkpoints/{ckpt}/export", params={"format": "onnx"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream", r.text
        assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-step-0000020480.onnx"'
        session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
        assert np.array_equal(session.run(["action"], {"obs": obs})[0], expected)
    r = client.get(f"/jobs/{job_id}/checkpoints/best/export", params={"format": "pickle"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "format"]
    assert client.get(f"/jobs/{job_id}/checkpoints/step-0000000001/export").status_code == 404


def test_unknown_checkpoint_is_404(client, finished_job):
    r = client.get(f"/jobs/{finished_job['id']}/checkpoints/step-0000000001/archive")
    assert r.status_code == 404 and "no checkpoint" in r.json()["detail"]


def test_checkpoint_ids_outside_the_pattern_never_reach_the_disk(client, finished_job):
    base = f"/jobs/{finished_job['id']}/checkpoints"
    for ckpt in ("..%2F..%2Fjobs.sqlite3", "jobs.sqlite3", "step-1", "LATEST"):
        r = client.get(f"{base}/{ckpt}/archive")
        assert r.status_code in (404, 422) and r.headers["content-type"] == "application/json"


STORAGE_JOB = {"env": "CartPole-v1", "total_steps": 4096, "workers": 2, "envs_per_worker": 4,
               "a2c": {"steps_per_batch": 512}, "eval_every": 0, "checkpoint_every": 4}


@pytest.fixture(scope="module")
def uri_server(tmp_path_factory):
    """A server whose A2C_STORAGE is an fsspec URI: `local://`, which takes the same fsspec path
    as s3:// and, unlike memory://, is shared by the server and its jobs' driver processes."""
    pytest.importorskip("fsspec")
    server = start_server(tmp_path_factory, A2C_STORAGE=f"local://{tmp_path_factory.mktemp('uri-storage')}/jobs")
    yield server
    server.stop()


def test_jobs_write_to_a_storage_uri_and_the_api_lists_serves_and_resumes_from_it(uri_server, tmp_path):
    with uri_server.client() as client:
        job_id = client.post("/jobs", json=STORAGE_JOB).raise_for_status().json()["id"]
        assert client.wait_finished(job_id)["status"] == "SUCCEEDED"
        listed = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
        assert [c["step"] for c in listed] == [2048, 4096]
        r = client.get(f"/jobs/{job_id}/checkpoints/latest/archive")
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
        assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-step-0000004096.tar.gz"'
        assert len(r.content) == listed[-1]["size_bytes"]
        assert read_archive(r.content).manifest["job_id"] == job_id
        # Resuming reads the archive back from the storage URI.
        resumed = client.post("/jobs", json={"resume_from": {"job_id": job_id}, "total_steps": 6144})
        resumed_id = resumed.raise_for_status().json()["id"]
        assert client.wait_finished(resumed_id)["status"] == "SUCCEEDED"
        rows = client.all_metrics(resumed_id)
        assert [r["step"] for r in rows] == [4608, 5120, 5632, 6144]
    # Nothing but the job database is on the local data dir: TensorBoard's files are in storage.
    assert sorted(p.name for p in uri_server.data_dir.iterdir()) == [
        n for n in ("jobs.sqlite3", "jobs.sqlite3-shm", "jobs.sqlite3-wal") if (uri_server.data_dir / n).exists()]
    storage_root = Path(uri_server.env["A2C_STORAGE"].removeprefix("local://"))
    for run in (job_id, resumed_id):
        assert list(storage_root.glob(f"tensorboard/CartPole-v1-{run}/events.out.tfevents.*")), run
    path = tmp_path / "from-uri.tar.gz"
    path.write_bytes(r.content)
    out = subprocess.run([sys.executable, "-m", "api.cli", "evaluate", str(path), "--episodes", "2"],
                         capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["env"] == "CartPole-v1"


def test_server_refuses_to_start_on_a_storage_uri_nothing_can_open(spawn_server):
    with pytest.raises(RuntimeError, match="nosuchfs://"):
        spawn_server(A2C_STORAGE="nosuchfs://bucket/jobs")
