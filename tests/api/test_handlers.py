"""Handlers in-process, without Ray: the app's dependencies are swapped for a real store and a
job manager that is never started (so jobs stay PENDING), through `app.dependency_overrides`."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import Settings
from api.deps import get_app_settings, get_manager, get_queries, get_store
from service.jobs.locations import JobLocations
from service.jobs.manager import JobLimits, JobManager
from service.jobs.queries import JobQueries
from service.store import CheckpointRow, JobStore

SPEC = {"env": "CartPole-v1", "total_steps": 2048, "workers": 2, "envs_per_worker": 4,
        "a2c": {"steps_per_batch": 512}}


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


@pytest.fixture
def manager(store, tmp_path):
    return JobManager(store, JobLocations(tmp_path), JobLimits(max_total_steps=100_000), cluster_cpus=lambda: 4.0)


def make_client(store, manager, **settings) -> TestClient:
    """A client of an app whose lifespan does not run: no Ray, dependencies overridden."""
    app = create_app(Settings(**{"max_body_bytes": 4096, **settings}))
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_manager] = lambda: manager
    app.dependency_overrides[get_queries] = lambda: JobQueries(store, manager.locations, manager.cluster_cpus)
    return TestClient(app)


@pytest.fixture
def client(store, manager):
    return make_client(store, manager)


def test_submit_is_201_pending_and_listed(client):
    r = client.post("/jobs", json=SPEC)
    assert r.status_code == 201 and r.json()["status"] == "PENDING"
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    assert [j["id"] for j in client.get("/jobs").json()["jobs"]] == [r.json()["id"]]


def test_fields_left_out_take_the_spec_defaults(client):
    job = client.post("/jobs", json={"env": "CartPole-v1", "workers": 1, "envs_per_worker": 1}).json()
    assert job["spec"]["a2c"]["learning_rate"] > 0 and job["spec"]["total_steps"] == 100_000


def test_name_and_tags_are_stored_and_listed(client):
    a = client.post("/jobs", json={**SPEC, "name": "lr sweep 1", "tags": ["sweep", "lr"]}).json()
    b = client.post("/jobs", json={**SPEC, "tags": ["sweep"]}).json()
    c = client.post("/jobs", json=SPEC).json()
    listed = {j["id"]: j["spec"] for j in client.get("/jobs").json()["jobs"]}
    assert listed[a["id"]]["name"] == "lr sweep 1" and listed[a["id"]]["tags"] == ["sweep", "lr"]
    assert listed[c["id"]]["name"] is None and listed[c["id"]]["tags"] == []
    assert listed[b["id"]]["tags"] == ["sweep"]
    r = client.post("/jobs", json={**SPEC, "name": "../etc", "tags": ["two words"]})
    assert r.status_code == 422 and sorted(e["loc"][1] for e in r.json()["detail"]) == ["name", "tags"]


def test_stop_of_a_queued_job_is_202_then_stopped_then_409(client):
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    r = client.post(f"/jobs/{job_id}/stop")
    assert r.status_code == 202 and r.json()["status"] == "STOPPED"
    assert client.post(f"/jobs/{job_id}/stop").status_code == 409


def test_pages_walk_every_job_once_newest_first(client):
    ids = [client.post("/jobs", json=SPEC).json()["id"] for _ in range(5)]
    seen, token = [], None
    while True:
        page = client.get("/jobs", params={"max_results": 2, **({"page_token": token} if token else {})}).json()
        seen += [j["id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == ids[::-1]


def test_metrics_rows_only_carry_the_keys_they_have(client, store):
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    store.append_metrics(job_id, {"step": 512, "loss": 1.0})
    store.append_metrics(job_id, {"step": 1024, "loss": float("nan"), "eval_return_mean": 9.0})
    rows = client.get(f"/jobs/{job_id}/metrics").json()["rows"]
    assert rows == [{"step": 512, "loss": 1.0}, {"step": 1024, "loss": None, "eval_return_mean": 9.0}]
    detail = client.get(f"/jobs/{job_id}").json()
    assert detail["latest_metrics"]["step"] == 1024 and detail["progress"]["step"] == 1024


def test_stream_of_a_finished_job_sends_its_rows_then_end(client, store):
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    for step in (512, 1024):
        store.append_metrics(job_id, {"step": step})
    store.finish(job_id, "FAILED", error="boom", error_type="TrainingFailed")
    with client.stream("GET", f"/jobs/{job_id}/metrics/stream") as r:
        text = "".join(r.iter_text())
    assert text.index("id: 512") < text.index("id: 1024") < text.index("event: end")
    assert '"status": "FAILED"' in text
    assert client.get(f"/jobs/{job_id}").json()["error"] == {"type": "TrainingFailed", "message": "boom"}


@pytest.mark.parametrize("since", [2**63 - 1, 2**63, 10**30])
def test_since_step_and_last_event_id_past_sqlite_integers_are_422_not_500(client, store, since):
    # SQLite's INTEGER is 64-bit: 2**63 raised OverflowError in the store (a 500, and a stream
    # that aborted); the largest allowed step simply has no rows after it.
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    store.append_metrics(job_id, {"step": 512})
    store.finish(job_id, "SUCCEEDED")
    fits = since < 2**63
    r = client.get(f"/jobs/{job_id}/metrics", params={"since_step": since})
    assert r.status_code == (200 if fits else 422), r.text
    if fits:
        assert r.json()["rows"] == []
    else:
        assert r.json()["detail"][0]["loc"] == ["query", "since_step"]
    r = client.get(f"/jobs/{job_id}/metrics/stream", params={"since_step": since})
    assert r.status_code == (200 if fits else 422), r.text
    r = client.get(f"/jobs/{job_id}/metrics/stream", headers={"Last-Event-ID": str(since)})
    assert r.status_code == (200 if fits else 422), r.text
    if fits:
        assert "event: end" in r.text and "id: 512" not in r.text
    else:
        assert r.json()["detail"][0]["loc"] == ["header", "last-event-id"]


def test_stored_jobs_are_read_as_stored_not_validated_again(client, store):
    # A job whose env is no longer registered, or whose spec this version would refuse, made
    # every page of GET /jobs that held it, and GET /jobs/{id}, a 500.
    ok = client.post("/jobs", json=SPEC).json()["id"]
    gone, *_ = store.create_job("0123456789ab", {**SPEC, "env": "Gone-v0"})
    odd, *_ = store.create_job("ba9876543210", {**SPEC, "workers": "two", "future_field": 1})
    listed = client.get("/jobs")
    assert listed.status_code == 200, listed.text
    assert {j["id"] for j in listed.json()["jobs"]} == {ok, gone.id, odd.id}
    for job in (gone, odd):
        r = client.get(f"/jobs/{job.id}")
        assert r.status_code == 200, r.text
        assert r.json()["spec"] == job.spec
    assert client.get("/jobs", params={"max_results": 1}).status_code == 200


def test_archive_outside_the_job_directory_is_never_served(client, store, tmp_path):
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    (tmp_path / "secret.tar.gz").write_bytes(b"not yours")
    store.add_checkpoint(job_id, CheckpointRow("step-0000000512", 512, None, 9, 1.0, "secret.tar.gz"))
    assert client.get(f"/jobs/{job_id}/checkpoints/latest/archive").status_code == 404


def test_archive_file_name_is_made_from_stored_ids(client, store, tmp_path):
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    path = tmp_path / "jobs" / job_id / "checkpoints" / "step-0000000512.tar.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"archive bytes")
    store.add_checkpoint(job_id, CheckpointRow("step-0000000512", 512, 1.5, 13, 1.0,
                                               f"jobs/{job_id}/checkpoints/step-0000000512.tar.gz"))
    r = client.get(f"/jobs/{job_id}/checkpoints/latest/archive")
    assert r.status_code == 200 and r.content == b"archive bytes"
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-step-0000000512.tar.gz"'


def test_total_steps_over_the_server_limit_is_422(client):
    r = client.post("/jobs", json={**SPEC, "total_steps": 100_001})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "total_steps"]
    assert "100000" in r.json()["detail"][0]["msg"]


def test_body_over_the_limit_is_413_declared_or_streamed(client):
    assert client.post("/jobs", json={"env": "x" * 5000}).status_code == 413
    chunks = (b'{"env": "' + b"x" * 1000 for _ in range(10))  # no Content-Length: chunked
    assert client.post("/jobs", content=chunks, headers={"content-type": "application/json"}).status_code == 413


def test_token_guards_every_route_but_healthz(store, manager):
    client = make_client(store, manager, api_token="t0ken")
    assert client.get("/healthz").status_code == 200
    for path in ("/jobs", "/readyz", "/openapi.json", "/docs"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/jobs", headers={"Authorization": "Bearer t0ke"}).status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer t0ken"}).status_code == 200


def test_without_the_token_an_unknown_query_parameter_is_401_not_422(store, manager):
    # A 422 naming the parameter, given before the token check, let anyone probe parameter names.
    client = make_client(store, manager, api_token="t0ken")
    schema = client.get("/openapi.json", headers={"Authorization": "Bearer t0ken"}).json()
    paths = [p.replace("{job_id}", "0123456789ab").replace("{ckpt_id}", "latest")
             for p, ops in schema["paths"].items() if "get" in ops and p != "/healthz"]
    for path in [*paths, "/openapi.json", "/docs"]:
        r = client.get(path, params={"bogus": "1"})
        assert r.status_code == 401, (path, r.text)
        r = client.get(path, params={"bogus": "1"}, headers={"Authorization": "Bearer t0ken"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "bogus"], (path, r.text)
    assert client.get("/healthz", params={"bogus": "1"}).status_code == 422  # open to all: nothing to hide


def test_settings_dependency_can_be_swapped(store, manager):
    client = make_client(store, manager)
    client.app.dependency_overrides[get_app_settings] = lambda: Settings(api_token="other")
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer other"}).status_code == 200


def test_without_the_lifespan_the_service_is_503_not_500(tmp_path):
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    assert client.get("/jobs").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_openapi_documents_the_job_body_and_every_route(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"env", "total_steps", "workers", "a2c", "resume_from"} <= set(body["properties"])
    assert "tuned" not in body["properties"] and body["additionalProperties"] is False
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/stop", "/jobs/{job_id}/metrics",
            "/jobs/{job_id}/metrics/stream", "/jobs/{job_id}/checkpoints",
            "/jobs/{job_id}/checkpoints/{ckpt_id}/archive", "/healthz", "/readyz"} <= set(schema["paths"])
