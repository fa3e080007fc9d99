"""/jobs/{id}/checkpoints and archive downloads on a real server; `a2c evaluate` loads them."""

from __future__ import annotations

import json
import subprocess
import sys

from learner.checkpoint import read_archive


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
    out = subprocess.run([sys.executable, "-m", "service.cli", "evaluate", str(path), "--episodes", "2"],
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["env"] == "CartPole-v1" and result["episodes"] == 2 and result["return_mean"] > 0


def test_unknown_checkpoint_is_404(client, finished_job):
    r = client.get(f"/jobs/{finished_job['id']}/checkpoints/step-0000000001/archive")
    assert r.status_code == 404 and "no checkpoint" in r.json()["detail"]


def test_checkpoint_ids_outside_the_pattern_never_reach_the_disk(client, finished_job):
    base = f"/jobs/{finished_job['id']}/checkpoints"
    for ckpt in ("..%2F..%2Fjobs.sqlite3", "jobs.sqlite3", "step-1", "LATEST"):
        r = client.get(f"{base}/{ckpt}/archive")
        assert r.status_code in (404, 422) and r.headers["content-type"] == "application/json"
