"""/metrics (Prometheus), /jobs/{id}/plot.png and the dashboard's static files, in-process without
Ray (a real store, a job manager that is never started), and /metrics on a real server."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.config import Settings
from api.deps import get_manager, get_queries, get_store
from service.jobs.locations import JobLocations
from service.jobs.manager import JobLimits, JobManager
from service.jobs.queries import JobQueries
from service.store import JobStore

SPEC = {"env": "CartPole-v1", "total_steps": 2048, "workers": 2, "envs_per_worker": 4,
        "a2c": {"steps_per_batch": 512}}


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def make_client(store: JobStore, tmp_path, **settings) -> TestClient:
    """A client of an app whose lifespan does not run: no Ray, dependencies overridden."""
    manager = JobManager(store, JobLocations(tmp_path), JobLimits(), cluster_cpus=lambda: 4.0)
    app = create_app(Settings(**settings))
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_manager] = lambda: manager
    app.dependency_overrides[get_queries] = lambda: JobQueries(store, manager.locations, manager.cluster_cpus)
    return TestClient(app)


@pytest.fixture
def local(store, tmp_path):
    """A client of the in-process app."""
    return make_client(store, tmp_path)


def families(text: str) -> dict:
    """{name: family} of a Prometheus exposition (the parser raises on malformed text)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, name: str | None = None) -> dict[tuple, float]:
    """{sorted label items: value} of a family's samples called `name` (default: the family's)."""
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == (name or family.name)}


def test_metrics_report_jobs_by_state_updates_and_running_job_figures(local, store):
    running = local.post("/jobs", json=SPEC).json()["id"]
    queued = local.post("/jobs", json=SPEC).json()["id"]
    stopped = local.post("/jobs", json=SPEC).json()["id"]
    assert local.post(f"/jobs/{stopped}/stop").status_code == 202
    store.mark_running(running)
    store.append_metrics(running, {"step": 512, "env_steps_per_s": 900.0, "episode_return_mean": 20.0})
    store.append_metrics(running, {"step": 1024, "env_steps_per_s": 1100.5, "episode_return_mean": 31.5})
    store.append_metrics(stopped, {"step": 512, "env_steps_per_s": 800.0})

    r = local.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    f = families(r.text)
    assert samples(f["a2c_jobs"]) == {(("status", s),): n for s, n in
                                      [("PENDING", 1), ("RUNNING", 1), ("SUCCEEDED", 0), ("FAILED", 0), ("STOPPED", 1)]}
    assert samples(f["a2c_updates"], "a2c_updates_total") == {(): 3}
    key = (("env", "CartPole-v1"), ("job_id", running))
    assert samples(f["a2c_job_env_steps"], "a2c_job_env_steps_total") == {key: 1024}
    assert samples(f["a2c_job_updates"], "a2c_job_updates_total") == {key: 2}
    assert samples(f["a2c_job_env_steps_per_second"]) == {key: 1100.5}
    assert samples(f["a2c_job_episode_return_mean"]) == {key: 31.5}
    assert queued not in r.text and stopped not in r.text  # per-job series: running jobs only


def test_request_latency_histogram_is_labelled_by_route_template(local):
    job_id = local.post("/jobs", json=SPEC).json()["id"]
    for _ in range(3):
        assert local.get(f"/jobs/{job_id}").status_code == 200
    assert local.get("/jobs/000000000000").status_code == 404
    assert local.get("/no/such/path").status_code == 404
    hist = families(local.get("/metrics").text)["a2c_http_request_duration_seconds"]
    counts = samples(hist, "a2c_http_request_duration_seconds_count")
    assert counts[(("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "200"))] == 3
    assert counts[(("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "404"))] == 1
    assert counts[(("method", "POST"), ("route", "/jobs"), ("status", "201"))] == 1
    assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
    assert not any(job_id in str(labels) for labels in counts)  # never raw paths
    buckets = samples(hist, "a2c_http_request_duration_seconds_bucket")
    assert buckets[(("le", "+Inf"), ("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "200"))] == 3


def test_each_app_counts_only_its_own_requests(store, tmp_path):
    first, second = make_client(store, tmp_path), make_client(store, tmp_path)
    first.get("/jobs")
    counts = samples(families(second.get("/metrics").text)["a2c_http_request_duration_seconds"],
                     "a2c_http_request_duration_seconds_count")
    assert (("method", "GET"), ("route", "/jobs"), ("status", "200")) not in counts


def test_metrics_and_plot_need_the_token_but_the_dashboard_page_does_not(store, tmp_path):
    client = make_client(store, tmp_path, api_token="t0ken")
    job_id = client.post("/jobs", json=SPEC, headers={"Authorization": "Bearer t0ken"}).json()["id"]
    for path in ("/metrics", f"/jobs/{job_id}/plot.png"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer t0ken"}).status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/charts.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


def test_plot_png_draws_the_return_curve_at_the_asked_size(local, store):
    from PIL import Image
    job_id = local.post("/jobs", json=SPEC).json()["id"]
    for i in range(1, 5):
        store.append_metrics(job_id, {"step": 512 * i, "episode_return_mean": 10.0 * i,
                                      "episode_return_min": 5.0 * i, "episode_return_max": 15.0 * i})
    store.append_metrics(job_id, {"step": 2560, "episode_return_mean": 45.0, "eval_return_mean": 60.0})
    r = local.get(f"/jobs/{job_id}/plot.png", params={"width": 6, "height": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content)).convert("RGB")
    assert image.size == (600, 300)
    colours = {c for _, c in image.getcolors(maxcolors=600 * 300)}
    assert (0x25, 0x63, 0xEB) in colours  # the mean-return line
    assert (0xDC, 0x26, 0x26) in colours  # the eval markers


def test_plot_png_of_a_job_without_metrics_says_so_and_unknown_job_is_404(local):
    job_id = local.post("/jobs", json=SPEC).json()["id"]
    assert local.get(f"/jobs/{job_id}/plot.png").status_code == 200
    assert local.get("/jobs/0123456789ab/plot.png").status_code == 404
    assert local.get(f"/jobs/{job_id}/plot.png", params={"width": 100}).status_code == 422


def test_metrics_of_a_real_server_parse_and_count_the_finished_job(client, finished_job):
    f = families(client.get("/metrics").raise_for_status().text)
    states = samples(f["a2c_jobs"])
    assert states[(("status", "SUCCEEDED"),)] >= 1
    assert samples(f["a2c_updates"], "a2c_updates_total")[()] >= 40  # the finished job's 40 updates
    counts = samples(f["a2c_http_request_duration_seconds"], "a2c_http_request_duration_seconds_count")
    assert counts[(("method", "POST"), ("route", "/jobs"), ("status", "201"))] >= 1
    assert counts[(("method", "GET"), ("route", "/jobs/{job_id}/metrics/stream"), ("status", "200"))] >= 1
