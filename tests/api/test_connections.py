"""The HTTP server's connection limits, on the real uvicorn configuration of `a2c serve`
(api.server.server_config: the read deadline, keep-alive, connection and stream caps), served
in this process without Ray: the manager validates and queues, so jobs stay PENDING and their
metrics streams stay open."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.config import Settings
from api.server import server_config
from service.jobs.locations import JobLocations
from service.jobs.manager import JobLimits, JobManager
from service.jobs.queries import JobQueries
from service.store import JobStore
from tests.api.conftest import free_port

JOB = {"env": "CartPole-v1", "total_steps": 2048, "workers": 1, "envs_per_worker": 2, "a2c": {"steps_per_batch": 256}}


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """uvicorn on a free loopback port: requests must arrive within 1 s, 2 streams at most."""
    data_dir = tmp_path_factory.mktemp("connections")
    settings = Settings(data_dir=data_dir, port=free_port(), request_read_timeout_s=1.0, max_streams=2,
                        max_connections=20, keep_alive_s=5.0)
    app = create_app(settings)

    @contextlib.asynccontextmanager
    async def without_ray(app):
        store = JobStore(data_dir / "jobs.sqlite3")
        manager = JobManager(store, JobLocations(data_dir), JobLimits(), cluster_cpus=lambda: 4.0)
        app.state.store, app.state.manager = store, manager
        app.state.queries = JobQueries(store, manager.locations, manager.cluster_cpus)
        try:
            yield
        finally:
            store.close()

    app.router.lifespan_context = without_ray
    server = uvicorn.Server(server_config(app, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield settings
    server.should_exit = True
    thread.join(30)


def raw(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data` on a new connection and read until the server closes it: (reply, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply, time.monotonic() - t0


def test_a_body_shorter_than_its_content_length_gets_408_and_the_connection_closes(http_server):
    reply, took = raw(http_server.port, b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: 100\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"did not arrive in time" in reply and took < 15


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half-headers"])
def test_a_request_that_never_arrives_whole_is_cut_off(http_server, sent):
    reply, took = raw(http_server.port, sent)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert took < 15


def test_a_slow_request_does_not_hold_up_the_others(http_server):
    slow = threading.Thread(target=raw, args=(http_server.port, b"POST /jobs HTTP/1.1\r\nHost: x\r\n"
                                              b"Content-Length: 100\r\n\r\n{"))
    slow.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{http_server.port}", timeout=10) as client:
        assert client.get("/healthz").status_code == 200
    slow.join(30)


def test_streams_past_the_limit_get_503_while_healthz_and_post_jobs_answer(http_server):
    url = f"http://127.0.0.1:{http_server.port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        job_id = client.post("/jobs", json=JOB).raise_for_status().json()["id"]  # PENDING: streams stay open
        with contextlib.ExitStack() as streams:
            for _ in range(2):
                response = streams.enter_context(client.stream("GET", f"/jobs/{job_id}/metrics/stream"))
                assert response.status_code == 200
            refused = client.get(f"/jobs/{job_id}/metrics/stream")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5", refused.text
            assert "A2C_MAX_STREAMS" in refused.json()["detail"]
            assert client.get("/healthz").status_code == 200
            assert client.post("/jobs", json=JOB).status_code == 201
        deadline = time.monotonic() + 10  # the closed streams give their slots back
        while True:
            with client.stream("GET", f"/jobs/{job_id}/metrics/stream") as response:
                if response.status_code == 200:
                    break
            assert time.monotonic() < deadline, response.status_code
            time.sleep(0.2)


def test_the_server_config_caps_connections_and_keep_alive(http_server):
    config = server_config(create_app(http_server), http_server)
    assert config.limit_concurrency == 20 and config.timeout_keep_alive == 5.0
    assert config.http.read_timeout_s == 1.0


def test_streams_must_leave_room_for_other_requests():
    with pytest.raises(ValueError, match="A2C_MAX_STREAMS .* must be below A2C_MAX_CONNECTIONS"):
        Settings(max_streams=100, max_connections=100)
