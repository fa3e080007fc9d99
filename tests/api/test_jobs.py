"""/jobs on a real server with real Ray: lifecycle, listing, stop, resume, idempotency, errors."""

from __future__ import annotations

import pytest


def test_submit_returns_201_pending_at_once_with_a_location(finished_job):
    post = finished_job["post"]
    assert post.status_code == 201
    body = post.json()
    assert body["status"] == "PENDING" and body["progress"]["step"] == 0
    assert post.headers["location"] == f"/jobs/{body['id']}"
    assert body["spec"]["env"] == "CartPole-v1" and body["spec"]["a2c"]["steps_per_batch"] == 512


def test_job_runs_to_succeeded_with_progress_times_and_latest_metrics(client, finished_job):
    job = client.get(f"/jobs/{finished_job['id']}").json()
    assert job["status"] == "SUCCEEDED" and job["error"] is None
    assert job["progress"]["step"] >= 20_000 and job["progress"]["fraction"] == 1.0
    assert job["created"] <= job["started"] <= job["ended"]
    assert job["latest_metrics"]["step"] == job["progress"]["step"]
    assert "eval_return_mean" in job["latest_metrics"]  # the last update is always evaluated
    assert job["summary"]["status"] == "SUCCEEDED" and job["summary"]["checkpoint"].startswith("step-")
    kinds = [e["kind"] for e in job["events"]]
    assert kinds[0] == "submitted" and "started" in kinds and kinds[-1] == "succeeded"
    assert any(e["kind"] == "device" for e in job["events"])  # the device and its reason


def test_jobs_on_warm_and_new_processes_are_isolated_and_train_the_same(client, server, finished_job, small_job):
    # The server keeps a spare driver with warm actors for the next job (the first one took
    # the one made at start). However a job's processes came, the same spec and seed must
    # train the same rows: nothing of an earlier job may reach a later one.
    timing = {"wall_s", "env_steps_per_s"}

    def rows(job_id):
        return [{k: v for k, v in r.items() if k not in timing} for r in client.all_metrics(job_id)]

    first = rows(finished_job["id"])
    for _ in range(2):
        job_id = client.post("/jobs", json=small_job).raise_for_status().json()["id"]
        assert client.wait_finished(job_id)["status"] == "SUCCEEDED"
        assert rows(job_id) == first
    warm = client.get("/readyz").json()["checks"]["warm"]
    assert warm.startswith("ok: ") and warm != "ok: off (A2C_WARM_JOBS)", warm


def test_list_is_newest_first_filters_by_status_and_pages(client, finished_job, stopped_job):
    everything = client.get("/jobs", params={"max_results": 500}).json()
    ids = [j["id"] for j in everything["jobs"]]
    assert everything["next_page_token"] is None
    assert ids.index(stopped_job["id"]) < ids.index(finished_job["id"])  # newer first
    paged, token = [], None
    while True:
        page = client.get("/jobs", params={"max_results": 1, **({"page_token": token} if token else {})}).json()
        assert len(page["jobs"]) <= 1
        paged += [j["id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert paged == ids
    stopped = client.get("/jobs", params={"status": "STOPPED"}).json()["jobs"]
    assert stopped_job["id"] in [j["id"] for j in stopped] and {j["status"] for j in stopped} == {"STOPPED"}
    two = client.get("/jobs", params=[("status", "STOPPED"), ("status", "SUCCEEDED")]).json()["jobs"]
    assert {finished_job["id"], stopped_job["id"]} <= {j["id"] for j in two}


def test_stop_ends_stopped_with_a_final_checkpoint_at_the_last_step(client, stopped_job):
    assert stopped_job["stop"].status_code == 202
    assert stopped_job["stop"].json()["stop_requested"] is True
    job = stopped_job["job"]
    assert job["status"] == "STOPPED" and job["error"] is None
    assert job["progress"]["step"] < job["progress"]["total_steps"]
    latest = client.get(f"/jobs/{job['id']}/checkpoints").json()["checkpoints"][-1]
    assert latest["step"] == job["progress"]["step"] == job["latest_metrics"]["step"]


def test_stop_of_a_finished_job_is_409(client, finished_job, stopped_job):
    for job_id in (finished_job["id"], stopped_job["id"]):
        r = client.post(f"/jobs/{job_id}/stop")
        assert r.status_code == 409 and "already finished" in r.json()["detail"]


def test_jobs_run_side_by_side_and_wait_in_pending_when_cpus_run_out(client, long_job):
    one_worker = {**long_job, "workers": 1}  # a worker and a learner: 2 of the cluster's 4 CPUs
    first, second, third = (client.post("/jobs", json=one_worker).raise_for_status().json()["id"]
                            for _ in range(3))
    for job_id in (first, second):
        client.wait_status(job_id, "RUNNING")
    assert client.get(f"/jobs/{third}").json()["status"] == "PENDING"  # waits; does not fail
    assert client.post(f"/jobs/{first}/stop").status_code == 202
    assert client.wait_finished(first)["status"] == "STOPPED"
    client.wait_status(third, "RUNNING")
    for job_id in (second, third):
        assert client.post(f"/jobs/{job_id}/stop").status_code == 202
    assert {client.wait_finished(j)["status"] for j in (second, third)} == {"STOPPED"}


def test_resume_continues_from_the_checkpoint_with_its_config(client, stopped_job):
    ckpt = client.get(f"/jobs/{stopped_job['id']}/checkpoints").json()["checkpoints"][-1]
    r = client.post("/jobs", json={"resume_from": {"job_id": stopped_job["id"], "checkpoint": "latest"},
                                   "total_steps": ckpt["step"] + 10 * 512})
    assert r.status_code == 201, r.text
    resumed = r.json()
    assert resumed["resumed_from"] == {"job_id": stopped_job["id"], "checkpoint": ckpt["id"]}
    # Fields left out come from the checkpoint's config, not from the defaults.
    assert resumed["spec"]["envs_per_worker"] == 4 and resumed["spec"]["a2c"]["steps_per_batch"] == 512
    job = client.wait_finished(resumed["id"])
    assert job["status"] == "SUCCEEDED", job
    steps = [row["step"] for row in client.all_metrics(resumed["id"])]
    assert steps[0] == ckpt["step"] + 512 and steps == sorted(set(steps))
    assert steps[-1] >= ckpt["step"] + 10 * 512
    assert any(e["kind"] == "resume" and ckpt["id"] in e["message"] for e in job["events"])


def test_resume_refuses_a_budget_the_checkpoint_already_reached(client, stopped_job):
    r = client.post("/jobs", json={"resume_from": {"job_id": stopped_job["id"]}, "total_steps": 512})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "total_steps"]


def test_idempotent_retry_returns_the_same_job_and_queues_nothing_new(client, small_job):
    small_job["total_steps"] = 1024
    headers = {"Idempotency-Key": "retry-test-1"}
    first = client.post("/jobs", json=small_job, headers=headers)
    again = client.post("/jobs", json=small_job, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    ids = [j["id"] for j in client.get("/jobs", params={"max_results": 500}).json()["jobs"]]
    assert ids.count(first.json()["id"]) == 1
    other = client.post("/jobs", json={**small_job, "seed": 7}, headers=headers)
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert client.wait_finished(first.json()["id"])["status"] == "SUCCEEDED"


def test_no_token_configured_means_no_auth_needed(server):
    with server.client(token="") as anonymous:
        assert anonymous.get("/jobs").status_code == 200
        assert anonymous.get("/readyz").json()["status"] == "ok"


@pytest.mark.parametrize(("body", "loc"), [
    ({"env": "NoSuchEnv-v0"}, ["body", "env"]),
    ({"env": "os:system"}, ["body", "env"]),  # a module path: refused, never imported
    ({"env": "FrozenLake-v1"}, ["body", "env"]),  # registered, but Discrete observations
    ({"env": "CartPole-v1", "a2c": {"learning_rate": 5}}, ["body", "a2c", "learning_rate"]),
    ({"env": "CartPole-v1", "a2c": {"gamma": "high"}}, ["body", "a2c", "gamma"]),
    ({"env": "CartPole-v1", "workers": "two"}, ["body", "workers"]),
    ({"env": "CartPole-v1", "bogus": 1}, ["body", "bogus"]),
    ({"env": "CartPole-v1", "total_steps": 10**9}, ["body", "total_steps"]),  # over A2C_MAX_TOTAL_STEPS
    ({"env": "CartPole-v1", "workers": 8, "envs_per_worker": 1, "a2c": {"steps_per_batch": 512}},
     ["body", "workers"]),  # 9 CPUs needed, the cluster has 4
    ({"env": "CartPole-v1", "env_kwargs": {"no_such_kwarg": 1}}, ["body", "env_kwargs"]),
    ({"total_steps": 1000}, ["body", "env"]),
    ({"resume_from": {"job_id": "0" * 12}}, ["body", "resume_from", "job_id"]),
    ({"resume_from": {"job_id": "../../etc"}}, ["body", "resume_from", "job_id"]),
    ([1, 2], ["body"]),
])
def test_invalid_submission_is_422_naming_the_field(client, body, loc):
    r = client.post("/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    assert r.json()["detail"][0]["msg"]


def test_batch_that_does_not_split_over_workers_is_422_naming_steps_per_batch(client):
    r = client.post("/jobs", json={"env": "CartPole-v1", "workers": 3, "envs_per_worker": 5,
                                   "a2c": {"steps_per_batch": 512}})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    # A check across fields still names its field, and says what would fit.
    assert detail["loc"] == ["body", "a2c", "steps_per_batch"]
    assert detail["msg"].startswith("512 must be a multiple") and "use 510 or 525" in detail["msg"]


def test_resume_from_a_missing_checkpoint_is_422_naming_it(client, finished_job):
    r = client.post("/jobs", json={"resume_from": {"job_id": finished_job["id"], "checkpoint": "step-0000000001"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "resume_from", "checkpoint"]


def test_malformed_json_is_422(client):
    r = client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_oversized_body_is_413(client):
    r = client.post("/jobs", json={"env": "x" * (2 << 20)})
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/jobs/0123456789ab", "/jobs/0123456789ab/metrics",
                                  "/jobs/0123456789ab/metrics/stream", "/jobs/0123456789ab/checkpoints",
                                  "/jobs/0123456789ab/checkpoints/latest/archive"])
def test_unknown_job_is_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "no job" in r.json()["detail"]


def test_stop_of_an_unknown_job_is_404(client):
    assert client.post("/jobs/0123456789ab/stop").status_code == 404


@pytest.mark.parametrize("path", ["/jobs/NOT-AN-ID", "/jobs/0123456789abc", "/jobs/..%2F..%2Fetc"])
def test_malformed_job_id_never_reaches_the_store(client, path):
    assert client.get(path).status_code in (404, 422)


@pytest.mark.parametrize(("params", "loc"), [
    ({"status": "DONE"}, ["query", "status", 0]),
    ({"page_token": "not-a-token"}, ["query", "page_token"]),
    ({"max_results": 0}, ["query", "max_results"]),
])
def test_bad_list_parameters_are_422(client, params, loc):
    r = client.get("/jobs", params=params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc
