"""Sweeps end to end through the API: a tiny ASHA sweep on CartPole whose every trial is a job,
and the search-space checks (422 naming the path)."""

from __future__ import annotations

import time

import pytest

from service.store import JobStore

SWEEP_BASE = {"env": "CartPole-v1", "total_steps": 8192, "workers": 1, "envs_per_worker": 4,
              "a2c": {"steps_per_batch": 256, "optimizer": "adam"}, "eval_every": 4, "eval_episodes": 3,
              "checkpoint_every": 8}
"""32 updates of 256 steps, an evaluation every 4 (1024 steps): a trial job takes seconds. Adam,
not the tuned table's optimizer: the ASHA test below needs lr 7e-3 to learn fast in these few
updates, which Adam does and the tuned CartPole entry's RMSprop (lr 3e-3 there) does not."""
SWEEP = {
    "base": {**SWEEP_BASE, "total_steps": 32768, "eval_every": 8},
    "space": {"a2c.learning_rate": {"choice": [1e-6, 7e-3]}, "a2c.entropy_coef": {"uniform": [0.0, 0.02]}},
    "num_samples": 4, "max_concurrent_trials": 2, "seed": 4,
    "scheduler": "asha", "asha": {"grace_steps": 2048, "reduction_factor": 2},
}
"""With seed 4, Tune's random search gives the trials learning rates 7e-3, 7e-3, 7e-3, then
1e-6: the last starts once an earlier trial has ended, so ASHA has good trials' records at
its rungs (2048, 4096, ... steps; an evaluation every 2048) when it gets there, and stops it.
The budget, 16x the first rung, leaves the stop time to land: the trial reports at most once a
poll (1 s), then Tune decides and the server stops the job. With 8192 steps a fast trial once
finished before its stop (an overshoot of 1.8k steps past the rung is usual here)."""
SWEEP_TIMEOUT_S = 240


def wait_sweep(client, sweep_id: str, timeout: float = SWEEP_TIMEOUT_S) -> dict:
    """Poll GET /sweeps/{id} until the sweep ends; fail with its last state otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        sweep = client.get(f"/sweeps/{sweep_id}").raise_for_status().json()
        if sweep["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return sweep
        if time.monotonic() > deadline:
            pytest.fail(f"sweep {sweep_id} did not end in {timeout}s: {sweep}")
        time.sleep(0.5)


def test_tiny_asha_sweep_runs_every_trial_as_a_job(client):
    post = client.post("/sweeps", json=SWEEP, headers={"Idempotency-Key": "tiny-sweep"})
    assert post.status_code == 201, post.text
    sweep_id = post.json()["id"]
    again = client.post("/sweeps", json=SWEEP, headers={"Idempotency-Key": "tiny-sweep"})
    assert again.status_code == 201 and again.json()["id"] == sweep_id
    assert again.headers["Idempotent-Replayed"] == "true"

    sweep = wait_sweep(client, sweep_id)
    assert sweep["status"] == "SUCCEEDED", sweep
    trials = sweep["trials"]
    assert len(trials) == 4 and not sweep["trial_errors"], sweep
    listed = client.get("/jobs", params={"sweep_id": sweep_id}).raise_for_status().json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(t["job_id"] for t in trials)
    assert all(j["sweep_id"] == sweep_id for j in listed)
    for trial in trials:
        job = client.get(f"/jobs/{trial['job_id']}").raise_for_status().json()
        assert job["spec"]["a2c"]["learning_rate"] == trial["config"]["a2c.learning_rate"] in (1e-6, 7e-3)
        assert 0.0 <= job["spec"]["a2c"]["entropy_coef"] == trial["config"]["a2c.entropy_coef"] <= 0.02
        assert job["status"] in ("SUCCEEDED", "STOPPED"), job
        stops = [e["message"] for e in job["events"] if e["kind"] == "stop"]
        assert (job["status"] == "STOPPED") == bool(stops), f"a stop event on, and only on, a stopped job: {job}"
        assert client.all_metrics(job["id"]), "every trial has its own metrics"
        assert client.get(f"/jobs/{job['id']}/checkpoints").json()["checkpoints"], "and its checkpoints"
        if job["status"] == "STOPPED":  # ASHA stopped it: the reason is in its events
            assert "ASHA scheduler at its" in stops[0] and "-step rung" in stops[0], job["events"]
            assert job["progress"]["step"] < SWEEP["base"]["total_steps"]
    hopeless = [t for t in trials if t["config"]["a2c.learning_rate"] == 1e-6]
    assert hopeless and all(t["status"] == "STOPPED" for t in hopeless), f"ASHA did not stop lr 1e-6: {trials}"

    best = sweep["best_trial"]
    ranked = [t["best_metric"] for t in trials if t["best_metric"] is not None]
    assert best is not None and best["best_metric"] == max(ranked)
    assert best["checkpoint"]["archive_url"].startswith(f"/jobs/{best['job_id']}/checkpoints/")
    kept = client.get(f"/jobs/{best['job_id']}/checkpoints").json()["checkpoints"]
    assert best["checkpoint"]["id"] == next(c["id"] for c in kept if c["best"]), "the job's best-evaluated one"
    assert any(s["id"] == sweep_id for s in client.get("/sweeps").json()["sweeps"])
    assert client.post(f"/sweeps/{sweep_id}/stop").status_code == 409


def test_stopping_a_sweep_stops_its_trial_jobs(client):
    long = {**SWEEP, "base": {**SWEEP_BASE, "total_steps": 2_000_000}, "scheduler": "none", "num_samples": 2}
    sweep_id = client.post("/sweeps", json=long).raise_for_status().json()["id"]
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while not any(t["step"] > 0 for t in client.get(f"/sweeps/{sweep_id}").json()["trials"]):
        assert time.monotonic() < deadline, "no trial job trained"
        time.sleep(0.5)
    stop = client.post(f"/sweeps/{sweep_id}/stop")
    assert stop.status_code == 202, stop.text
    sweep = wait_sweep(client, sweep_id)
    assert sweep["status"] == "STOPPED" and "stopped by request" in sweep["message"], sweep
    for trial in sweep["trials"]:
        job = client.wait_finished(trial["job_id"], timeout=120)
        assert job["status"] == "STOPPED", job
        assert any("stopped by request" in e["message"] for e in job["events"] if e["kind"] == "stop")
        if job["progress"]["step"] > 0:
            assert client.get(f"/jobs/{job['id']}/checkpoints").json()["checkpoints"], "a final checkpoint"


@pytest.mark.parametrize("change, loc, words", [
    ({"space": {"a2c.learnig_rate": {"uniform": [0.001, 0.01]}}}, "space.a2c.learnig_rate", "not a job spec field"),
    ({"space": {"a2c.learning_rate": {"uniform": [0.01, 0.001]}}}, "space.a2c.learning_rate.uniform", "empty range"),
    ({"space": {"a2c.learning_rate": {"loguniform": [0.0, 0.01]}}}, "space.a2c.learning_rate.loguniform", "above 0"),
    ({"space": {"a2c.learning_rate": {"choice": ["fast"]}}}, "space.a2c.learning_rate", "'fast'"),
    ({"space": {"envs_per_worker": {"uniform": [1.5, 8]}}}, "space.envs_per_worker.uniform", "integers"),
    ({"space": {"a2c.optimizer": {"uniform": [0, 1]}}}, "space.a2c.optimizer.uniform", "not a number"),
    ({"space": {"a2c.learning_rate": {"uniform": [0.001, 0.01], "choice": [0.1]}}}, "space.a2c.learning_rate",
     "exactly one"),
    ({"space": {"total_steps": {"choice": [1000]}}}, "space.total_steps", "budget"),
    ({"space": {"workers": {"choice": [1, 500]}}}, "space.workers", "500"),
    ({"space": {}}, "space", "at least 1"),
    ({"base": {**SWEEP_BASE, "a2c": {"learning_rate": "x"}}}, "base.a2c.learning_rate", ""),
    ({"base": {**SWEEP_BASE, "eval_every": 0}}, "base.eval_every", "ASHA"),
    ({"metric": "nope"}, "metric", "not a metrics row key"),
    ({"num_samples": 0}, "num_samples", ""),
])
def test_bad_search_spaces_get_422_naming_the_path(client, change, loc, words):
    response = client.post("/sweeps", json={**SWEEP, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert ".".join(map(str, detail["loc"])) == f"body.{loc}", detail
    assert words in detail["msg"], detail


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(client):
    # Each value passes alone, but envs_per_worker 8 with steps_per_batch 4 is not a job (4 < 8):
    # those trials get no job, and error; the others run.
    sweep = {**SWEEP, "base": {**SWEEP_BASE, "total_steps": 2048}, "scheduler": "none", "seed": 1,
             "space": {"envs_per_worker": {"choice": [4, 8]}, "a2c.steps_per_batch": {"choice": [256, 4]}}}
    sweep_id = client.post("/sweeps", json=sweep).raise_for_status().json()["id"]
    done = wait_sweep(client, sweep_id)
    bad = [t for t in done["trial_errors"].values()]
    assert bad and all("steps_per_batch" in message for message in bad), done
    assert done["trials"] and len(done["trials"]) + len(bad) == 4, done
    assert done["status"] == "SUCCEEDED" and f"{len(bad)} trials errored" in done["message"], done
    assert all(t["status"] == "SUCCEEDED" for t in done["trials"]), done["trials"]


def test_a_sweep_never_outlives_its_server(spawn_server, tmp_path):
    token = "sweep-token"
    server = spawn_server(tmp_path / "data", token=token)
    long = {**SWEEP, "base": {**SWEEP_BASE, "total_steps": 2_000_000}, "scheduler": "none", "num_samples": 2}
    with server.client() as client:  # the trials call the API with the server's token
        sweep_id = client.post("/sweeps", json=long).raise_for_status().json()["id"]
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while not any(t["step"] > 0 for t in client.get(f"/sweeps/{sweep_id}").json()["trials"]):
            assert time.monotonic() < deadline, "no trial job trained"
            time.sleep(0.5)
    server.kill()  # a crash: the sweep's thread and its Ray die with the server

    server = spawn_server(tmp_path / "data", token=token)
    with server.client() as client:
        sweep = client.get(f"/sweeps/{sweep_id}").raise_for_status().json()
        assert sweep["status"] == "STOPPED" and "the server restarted" in sweep["message"], sweep
        for trial in sweep["trials"]:  # stopped, not resumed without their sweep
            job = client.wait_finished(trial["job_id"], timeout=60)
            assert job["status"] == "STOPPED", job
            assert any("ended when the server restarted" in e["message"] for e in job["events"]), job["events"]

        second = client.post("/sweeps", json=long).raise_for_status().json()["id"]
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while not any(t["step"] > 0 for t in client.get(f"/sweeps/{second}").json()["trials"]):
            assert time.monotonic() < deadline, "no trial job trained"
            time.sleep(0.5)
    server.stop()  # graceful: the sweep ends STOPPED, its jobs with a final checkpoint

    # What the stopped server left in its database (the API's view after a restart is the part above).
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    try:
        sweep = store.get_sweep(second)
        assert sweep.status == "STOPPED" and "the server shut down" in sweep.reason, sweep
        jobs = store.sweep_jobs(second)
        assert jobs and all(job.status == "STOPPED" for job in jobs), jobs
    finally:
        store.close()


def test_a2c_sweep_command_follows_a_sweep_on_a_server(server, tmp_path):
    import json
    import subprocess
    import sys

    import yaml

    config = tmp_path / "sweep.yaml"
    tiny = {**SWEEP, "base": {**SWEEP_BASE, "total_steps": 2048}, "num_samples": 2, "scheduler": "none",
            "space": {"a2c.learning_rate": {"loguniform": [1e-3, 1e-2]}}}
    config.write_text(yaml.safe_dump(tiny))
    done = subprocess.run([sys.executable, "-m", "api.cli", "sweep", "--config", str(config), "--server", server.url,
                           "--poll", "0.5"], capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "SUCCEEDED" and summary["trials"] == 2, summary
    assert summary["best_job_id"] and 1e-3 <= summary["best_config"]["a2c.learning_rate"] <= 1e-2
    assert f"sweep {summary['sweep_id']} SUCCEEDED" in done.stderr

    config.write_text(yaml.safe_dump({**tiny, "space": {"a2c.learning_rate": {"uniform": [0.01, 0.001]}}}))
    bad = subprocess.run([sys.executable, "-m", "api.cli", "sweep", "--config", str(config), "--server", server.url],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "", bad
    assert "body.space.a2c.learning_rate.uniform" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_a2c_sweep_without_a_server_runs_its_own_and_exits_cleanly(tmp_path):
    """`a2c sweep` alone serves the sweep from a thread of its own process, on an embedded Ray:
    it exits 0 as soon as the sweep has succeeded (its Ray left before the server thread ended;
    otherwise Ray's client waits 60 s for the dead GCS and ends the process with status 1)."""
    import json
    import subprocess
    import sys
    import time

    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**SWEEP, "base": {**SWEEP_BASE, "total_steps": 1024}, "num_samples": 1,
                                      "scheduler": "none", "space": {"a2c.learning_rate": {"choice": [7e-3]}}}))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "api.cli", "sweep", "--config", str(config),
                           "--data-dir", str(tmp_path / "data"), "--poll", "0.5"],
                          capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # the summary alone: Ray Tune's console output stays off stdout
    summary = json.loads(lines[0])
    assert summary["status"] == "SUCCEEDED" and summary["trials"] == 1, summary
    assert elapsed - summary["wall_s"] < 45, (elapsed, summary)
    assert (tmp_path / "data" / "jobs.sqlite3").exists()


def test_optuna_search_runs_a_sweep(client):
    pytest.importorskip("optuna")
    sweep = {**SWEEP, "base": {**SWEEP_BASE, "total_steps": 2048}, "num_samples": 2, "search": "optuna", "asha": {"grace_steps": 512, "reduction_factor": 2},
             "space": {"a2c.learning_rate": {"loguniform": [1e-3, 1e-2]}, "envs_per_worker": {"choice": [2, 4]}}}
    sweep_id = client.post("/sweeps", json=sweep).raise_for_status().json()["id"]
    done = wait_sweep(client, sweep_id)
    assert done["status"] == "SUCCEEDED" and len(done["trials"]) == 2, done
    for trial in done["trials"]:
        assert trial["config"]["envs_per_worker"] in (2, 4) and trial["best_metric"] is not None, trial
