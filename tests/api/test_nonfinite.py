"""Numerical faults through a real job: a loss that overflows float32 on every update.

`value_coef` 1e38 times a value loss of ~100 (an untrained value head against CartPole
returns) is inf in float32, so every gradient step is non-finite. The learner skips them; the
job fails after `max_nonfinite_updates` such updates in a row, with a reason that says so, and
no checkpoint ever holds non-finite weights.
"""

from __future__ import annotations

import numpy as np

from learner.checkpoint import read_archive

# use_tuned false: the tuned CartPole job normalises rewards, which would keep the loss finite.
BLOWN_UP = {"env": "CartPole-v1", "workers": 1, "envs_per_worker": 4, "eval_every": 0, "eval_episodes": 1,
            "use_tuned": False, "a2c": {"steps_per_batch": 256, "mini_batch_size": None, "value_coef": 1e38}}


def test_a_loss_that_is_inf_every_update_fails_the_job_with_the_reason(client):
    job_id = client.post("/jobs", json={**BLOWN_UP, "total_steps": 256 * 50, "checkpoint_every": 10,
                                        "max_nonfinite_updates": 3}).raise_for_status().json()["id"]
    job = client.wait_finished(job_id)
    assert job["status"] == "FAILED", job
    assert job["error"]["type"] == "TrainingFailed"
    assert "3 updates in a row had NaN/inf" in job["error"]["message"]
    skipped = [e for e in job["events"] if e["kind"] == "nonfinite"]
    assert len(skipped) == 3 and all("skipped 1 gradient step(s)" in e["message"] for e in skipped)
    assert "update at step 768" in skipped[-1]["message"], "it stopped at the third skipped update"
    rows = client.all_metrics(job_id)
    assert [r["step"] for r in rows] == [256, 512, 768]  # the failing update's row is recorded too
    assert all(r.get("loss") is None and r["weights_version"] == 0 for r in rows)  # nothing applied
    assert client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"] == []


def test_checkpoints_written_while_updates_are_skipped_hold_finite_unchanged_weights(client):
    job_id = client.post("/jobs", json={**BLOWN_UP, "total_steps": 256 * 4, "checkpoint_every": 1,
                                        "max_nonfinite_updates": 100}).raise_for_status().json()["id"]
    job = client.wait_finished(job_id)
    assert job["status"] == "SUCCEEDED", job  # the user allowed 100 skipped updates in a row
    assert len([e for e in job["events"] if e["kind"] == "nonfinite"]) == 4
    ckpts = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
    assert [c["step"] for c in ckpts] == [256, 512, 768, 1024]
    first = None
    for c in ckpts:
        archive = client.get(c["archive_url"])
        assert archive.status_code == 200
        ckpt = read_archive(archive.content)  # refuses NaN/inf weights itself, too
        tensors = ckpt.state.weights.tensors
        assert all(np.isfinite(t).all() for t in tensors.values())
        assert ckpt.manifest["weights_version"] == 0
        first = first or tensors
        assert all(np.array_equal(first[k], tensors[k]) for k in first), "no step was applied"
