"""Bad input gets a 4xx, never a 5xx, and never reaches the filesystem outside the data dir.

In-process, without Ray: the real app, store and job manager (never started, so jobs stay
PENDING), with the manager injected through `app.dependency_overrides`. The body-size limit
is also tried against the real server (uvicorn), whose HTTP parser differs from the test
client's.
"""

from __future__ import annotations

import mimetypes
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import Settings
from api.deps import get_manager, get_queries, get_store
from service.jobs.locations import JobLocations
from service.jobs.manager import JobLimits, JobManager
from service.jobs.queries import JobQueries
from service.store import CheckpointRow

SPEC = {"env": "CartPole-v1", "total_steps": 2048, "workers": 1, "envs_per_worker": 2,
        "a2c": {"steps_per_batch": 256}}
MAX_BODY = 4096


@pytest.fixture
def make_client(store, manager, data_dir):
    """A client of a fresh app over the test's store and manager, with these settings."""
    def make(**settings) -> TestClient:
        app = create_app(Settings(**{"data_dir": data_dir, "max_body_bytes": MAX_BODY, **settings}))
        app.dependency_overrides[get_store] = lambda: store
        app.dependency_overrides[get_manager] = lambda: manager
        app.dependency_overrides[get_queries] = lambda: JobQueries(store, manager.locations, manager.cluster_cpus)
        return TestClient(app, raise_server_exceptions=False)
    return make


@pytest.fixture
def client(make_client):
    return make_client()


def job_count(client) -> int:
    return len(client.get("/jobs", params={"max_results": 500}).json()["jobs"])


def assert_422_at(response, *loc: str | int) -> str:
    """The response is a 422 whose first error points at `loc`; returns its message."""
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"][:len(loc) + 1] == ["body", *loc], error
    return error["msg"]


# Malformed bodies

@pytest.mark.parametrize("body", [
    b'{"env": "CartPole-v1",', b"{'env': 'CartPole-v1'}", b'{"env": CartPole-v1}', b"\x00\x01\x02",
    b'{"env": "CartPole-v1"} trailing',
], ids=["truncated", "single-quotes", "bare-word", "binary", "trailing-garbage"])
def test_malformed_json_is_422_and_creates_nothing(client, body):
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "json_invalid"
    assert job_count(client) == 0


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                                  b'{"total_steps": ' + b"9" * 5000 + b"}", b'{"env": "\xff\xfe"}'],
                         ids=["deep-array", "deep-object", "5000-digit-int", "invalid-utf8"])
def test_bodies_the_json_parser_cannot_take_are_400(make_client, body):
    client = make_client(max_body_bytes=1 << 20)  # the default limit: these fit under it
    assert len(body) < 1 << 20
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert job_count(client) == 0


@pytest.mark.parametrize("body", [b"[1, 2]", b'"CartPole-v1"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_422(client, body):
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text


def test_a_body_that_is_not_json_at_all_is_422(client):
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        r = client.post("/jobs", content=b"env=CartPole-v1", headers=headers)
        assert r.status_code == 422, (headers, r.text)
    assert job_count(client) == 0


# Unknown fields, wrong types, values JSON cannot carry

@pytest.mark.parametrize("extra,loc", [
    ({"bogus": 1}, ("bogus",)),
    ({"a2c": {"learning_rte": 0.1}}, ("a2c", "learning_rte")),
    ({"policy": {"hidden": [8]}}, ("policy", "hidden")),
    ({"resume_from": {"job_id": "0123456789ab", "step": 3}}, ("resume_from", "step")),
    ({"tuned": ["a2c.gamma"]}, ()),  # set by the service only: dropped from the body, never trusted
])
def test_unknown_fields_are_422_naming_them(client, extra, loc):
    r = client.post("/jobs", json={**SPEC, **extra})
    if not loc:
        assert r.status_code == 201 and r.json()["spec"]["tuned"] != ["a2c.gamma"], r.text
        return
    assert "Extra inputs are not permitted" in assert_422_at(r, *loc)


@pytest.mark.parametrize("change,loc", [
    ({"workers": "two"}, ("workers",)), ({"workers": 1.5}, ("workers",)), ({"workers": True}, ("workers",)),
    ({"workers": "1"}, ("workers",)), ({"total_steps": 2048.0}, ("total_steps",)),
    ({"a2c": {"normalize_advantages": 1}}, ("a2c", "normalize_advantages")),
    ({"policy": {"log_std_init": False}}, ("policy", "log_std_init")), ({"policy": None}, ("policy",)),
    ({"a2c": None}, ("a2c",)), ({"policy": {"hidden_sizes": "64,64"}}, ("policy", "hidden_sizes")),
    ({"total_steps": [1]}, ("total_steps",)), ({"env": 5}, ("env",)), ({"env": None}, ("env",)),
    ({"env_kwargs": "x"}, ("env_kwargs",)), ({"env_kwargs": {"a": {"b": 1}}}, ("env_kwargs", "a")),
    ({"a2c": [1]}, ("a2c",)), ({"policy": "big"}, ("policy",)), ({"a2c": {"gamma": "high"}}, ("a2c", "gamma")),
    ({"mode": "turbo"}, ("mode",)), ({"resume_from": "latest"}, ("resume_from",)),
    ({"seed": -1}, ("seed",)), ({"total_steps": 0}, ("total_steps",)),
])
def test_wrong_types_and_ranges_are_422_naming_the_field(client, change, loc):
    # JSON types must match exactly: no "1" or true for a number, no null for an object.
    assert_422_at(client.post("/jobs", json={**SPEC, **change}), *loc)
    assert job_count(client) == 0


def test_every_bad_field_of_a_job_is_in_the_422_not_only_the_first(client):
    r = client.post("/jobs", json={**SPEC, "workers": 0, "a2c": {"steps_per_batch": 256, "gamma": 2,
                                                              "learning_rate": -1}})
    assert r.status_code == 422, r.text
    assert sorted(e["loc"] for e in r.json()["detail"]) == [
        ["body", "a2c", "gamma"], ["body", "a2c", "learning_rate"], ["body", "workers"]]
    assert job_count(client) == 0


@pytest.mark.parametrize("body,loc", [
    (b'{"env": "CartPole-v1", "a2c": {"learning_rate": NaN}}', ("a2c", "learning_rate")),
    (b'{"env": "Pendulum-v1", "env_kwargs": {"g": Infinity}}', ("env_kwargs", "g")),
    (b'{"env": "Pendulum-v1", "env_kwargs": {"g": 1e999}}', ("env_kwargs", "g")),
    (b'{"env": "Pendulum-v1", "env_kwargs": {"g": "\\ud800"}}', ("env_kwargs", "g")),
    (b'{"env": "Pendulum-v1", "env_kwargs": {"\\udfff": 1}}', ("env_kwargs",)),
    (b'{"env": "CartPole-v1", "\\ud800": 1}', ()),
    (b'{"resume_from": {"job_id": "0123456789ab", "\\ud800": 1}}', ("resume_from",)),
], ids=["nan", "infinity", "overflow", "surrogate-value", "surrogate-key", "surrogate-top-key", "surrogate-resume"])
def test_values_json_cannot_carry_back_out_are_422_not_500(client, body, loc):
    # Python's parser accepts NaN, Infinity and lone surrogate escapes; a job stored with them
    # could not be shown again (UTF-8 cannot encode a lone surrogate; JSON has no NaN).
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert_422_at(r, *loc)
    assert r.content.isascii()
    assert job_count(client) == 0


# Sizes

def test_huge_declared_body_is_413_before_it_is_read(client):
    r = client.post("/jobs", json={**SPEC, "env_kwargs": {"pad": "x" * MAX_BODY}})
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]
    assert job_count(client) == 0


def test_huge_chunked_body_is_413(client):
    def chunks():
        yield b'{"env": "CartPole-v1", "env_kwargs": {"pad": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}}'
    r = client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert job_count(client) == 0


def _raw_http(port: int, request: bytes, body_chunks=(), pause: float = 0.0) -> bytes:
    """Send a raw HTTP/1.1 request (headers, then each body chunk) and read the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered 413 and closed before the rest was sent
        reply = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            reply += data
            if b"\r\n\r\n" in reply and reply.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                break
    return reply


def test_real_server_refuses_huge_bodies_declared_or_chunked(server):
    port = server.port
    limit = 1 << 20  # the server's A2C_MAX_BODY_BYTES default
    declared = _raw_http(port, b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {limit * 64}\r\n\r\n".encode(), [b"{" + b" " * 1000])
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    piece = b" " * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    chunked = _raw_http(port, b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\n{\r\n",
                        [chunk] * (limit // len(piece) + 8) + [b"0\r\n\r\n"])
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    bogus = _raw_http(port, b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 12abc\r\n\r\n{}")
    assert bogus.startswith(b"HTTP/1.1 4"), bogus[:200]
    with server.client() as c:  # and it goes on serving
        assert c.get("/healthz").status_code == 200


# Path traversal

class FileAccess:
    """Records file-system audit events (open, listdir, remove, ...) of this process."""

    EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir", "os.rmdir",
              "os.symlink", "os.link", "os.truncate", "os.chmod", "os.utime", "shutil.rmtree",
              "shutil.copyfile", "shutil.move", "sqlite3.connect"}
    _active: "FileAccess | None" = None
    _installed = False

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        recorder = cls._active
        if recorder is None or event not in cls.EVENTS:
            return
        for arg in args:
            if isinstance(arg, (str, bytes, Path)):
                with recorder.lock:
                    recorder.paths.append(str(arg))

    def __enter__(self) -> "FileAccess":
        if not FileAccess._installed:  # audit hooks cannot be removed; one serves every test
            sys.addaudithook(FileAccess._hook)
            FileAccess._installed = True
        FileAccess._active = self
        return self

    def __exit__(self, *exc) -> None:
        FileAccess._active = None


def _outside(paths: list[str], root: Path, data_dir: Path) -> list[str]:
    """Those of `paths` under `root` (the test's own tree) but not under the data dir, and any
    under /etc: what traversal would reach."""
    bad = []
    for p in paths:
        resolved = Path(p).resolve() if not p.startswith("/etc") else Path(p)
        if p.startswith("/etc") or (resolved.is_relative_to(root.resolve())
                                    and not resolved.is_relative_to(data_dir.resolve())):
            bad.append(p)
    return bad


def test_traversal_in_job_and_checkpoint_ids_is_4xx_and_reads_nothing_outside(client, store, data_dir, tmp_path):
    secret = tmp_path / "secret.tar.gz"
    secret.write_bytes(b"SECRET archive bytes")
    (tmp_path / "secret.txt").write_text("SECRET")
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    ckpts = data_dir / "jobs" / job_id / "checkpoints"
    ckpts.mkdir(parents=True)
    # A checkpoint whose file is a symlink out of the job's directory: must not be followed.
    (ckpts / "step-0000000512.tar.gz").symlink_to(secret)
    store.add_checkpoint(job_id, CheckpointRow("step-0000000512", 512, None, 20, 1.0,
                                               f"jobs/{job_id}/checkpoints/step-0000000512.tar.gz"))
    ids = ["..", "%2e%2e", "%2E%2E", "..%2f..%2fsecret.txt", "%2e%2e%2f%2e%2e%2fsecret.txt",
           "..%5c..%5csecret.txt", "%252e%252e%252fsecret.txt", "..%00", "%c0%ae%c0%ae", ".%2e",
           f"{job_id}%2f..%2f..", f"{job_id}/../..", "/etc/passwd", "%2fetc%2fpasswd"]
    ckpt_ids = ids + ["latest%2f..%2f..%2f..%2fsecret.tar.gz", "step-0000000512%2f..%2f..%2f..%2fsecret.tar.gz",
                      "step-0000000512.tar.gz", "..%2f..%2f..%2f..%2fsecret.tar.gz"]
    paths = ([f"/jobs/{i}" for i in ids] + [f"/jobs/{i}/{tail}" for i in ids
                                            for tail in ("metrics", "checkpoints", "checkpoints/latest/archive")]
             + [f"/jobs/{job_id}/checkpoints/{c}/archive" for c in ckpt_ids]
             + [f"/jobs/{job_id}/checkpoints/latest/archive"])
    # The stdlib reads /etc/mime.types once, lazily, when a response first guesses a file's
    # type (the dashboard's static files): do that outside the recorded window.
    mimetypes.init()
    with FileAccess() as seen:
        for path in paths:
            r = client.get(path)
            if not r.request.url.path.startswith("/jobs/"):
                # The client resolved the dot segments itself (`/jobs/..` is `/`, `/jobs/../metrics`
                # is `/metrics`): the server saw a plain request for another route, no traversal.
                assert r.status_code < 500, (path, r.status_code, r.text)
            else:
                assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
            assert b"SECRET" not in r.content, path
            r = client.post(path + ("/stop" if path.count("/") == 2 else ""))
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        r = client.post("/jobs", json={"resume_from": {"job_id": job_id, "checkpoint": "latest"}, "total_steps": 4096})
        assert_422_at(r, "resume_from", "checkpoint")
        for bad in ("..", "../../secret", "/etc/passwd", "%2e%2e", "step-0000000512/../../x"):
            for field in ("job_id", "checkpoint"):
                resume = {"job_id": job_id, "checkpoint": "latest", field: bad}
                assert_422_at(client.post("/jobs", json={"resume_from": resume}), "resume_from", field)
    assert _outside(seen.paths, tmp_path, data_dir) == []
    assert job_count(client) == 1  # only the first, valid job
    # The recorder does see what the server reads: a real archive in the job's directory.
    real = ckpts / "step-0000001024.tar.gz"
    real.write_bytes(b"archive bytes")
    store.add_checkpoint(job_id, CheckpointRow("step-0000001024", 1024, None, 13, 2.0,
                                               f"jobs/{job_id}/checkpoints/step-0000001024.tar.gz"))
    with FileAccess() as control:
        assert client.get(f"/jobs/{job_id}/checkpoints/latest/archive").content == b"archive bytes"
        open(secret, "rb").close()
    assert str(real.resolve()) in [str(Path(p).resolve()) for p in control.paths]
    assert _outside(control.paths, tmp_path, data_dir) == [str(secret)]


def test_a_tampered_record_pointing_outside_the_data_dir_is_never_read(client, store, data_dir, tmp_path):
    secret = tmp_path / "outside.tar.gz"
    secret.write_bytes(b"SECRET")
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    for n, path in enumerate(["../outside.tar.gz", str(secret), f"jobs/{job_id}/../../../outside.tar.gz"]):
        store.add_checkpoint(job_id, CheckpointRow(f"step-{n + 1:010d}", n + 1, None, 6, 1.0, path))
        with FileAccess() as seen:
            assert client.get(f"/jobs/{job_id}/checkpoints/latest/archive").status_code == 404
            r = client.post("/jobs", json={"resume_from": {"job_id": job_id}, "total_steps": 4096})
            assert_422_at(r, "resume_from", "checkpoint")
        assert _outside(seen.paths, tmp_path, data_dir) == [], path


# Crafted archives behind a checkpoint record

def _place(store, data_dir: Path, job_id: str, data: bytes) -> Path:
    """A checkpoint record of `job_id` whose file on disk holds `data`."""
    rel = f"jobs/{job_id}/checkpoints/step-0000000256.tar.gz"
    path = data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    store.add_checkpoint(job_id, CheckpointRow("step-0000000256", 256, None, len(data), 1.0, rel))
    return path


def test_resume_from_a_crafted_archive_is_422_naming_the_reason(client, store, data_dir, crafted):
    source = client.post("/jobs", json=SPEC).json()["id"]
    _place(store, data_dir, source, crafted.data)
    r = client.post("/jobs", json={"resume_from": {"job_id": source, "checkpoint": "latest"}, "total_steps": 4096})
    msg = assert_422_at(r, "resume_from", "checkpoint")
    assert crafted.reason in msg and "step-0000000256 cannot be read" in msg
    assert job_count(client) == 1
    assert not crafted.marker.exists()
    assert sorted(p.name for p in data_dir.rglob("*") if p.is_file()) == sorted(
        ["jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", "step-0000000256.tar.gz"]), "nothing extracted"


def _resumable_source(client, store, data_dir) -> str:
    """A CartPole job with a real checkpoint archive to resume from."""
    from learner.checkpoint import archive_bytes
    from learner.learner import Learner
    from learner.spaces import SpacesSpec
    from service.run.spec import build_spec

    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    spec = build_spec(SPEC)
    learner = Learner(spaces, spec.policy, spec.a2c, spec.total_steps, seed=0)
    source = client.post("/jobs", json=SPEC).json()["id"]
    _place(store, data_dir, source, archive_bytes(learner.state(), spaces, "CartPole-v1",
                                                  spec.model_dump(mode="json")))
    return source


@pytest.mark.parametrize("layers", [8, 17])
def test_a_policy_too_large_is_422_on_hidden_sizes_before_any_model_is_built(client, store, data_dir, layers):
    # With resume_from, [4096] * 8 made the server build the whole network (235M parameters,
    # 27.7 s of CPU, +700 MB) only to compare its shapes with the checkpoint's.
    source = _resumable_source(client, store, data_dir)
    body = {"resume_from": {"job_id": source}, "total_steps": 4096, "policy": {"hidden_sizes": [4096] * layers}}
    msg = assert_422_at(client.post("/jobs", json=body), "policy", "hidden_sizes")
    assert ("over the limit of 20,000,000" in msg) if layers == 8 else ("at most 16" in msg), msg
    body = {**SPEC, "policy": {"hidden_sizes": [4096] * layers}}
    assert_422_at(client.post("/jobs", json=body), "policy", "hidden_sizes")


@pytest.mark.parametrize("kind", ["pickle", "checksum", "symlink"])
def test_an_archive_tampered_after_the_resume_was_accepted_fails_the_job(
        client, store, data_dir, _crafted_bytes, kind):
    marker, cases = _crafted_bytes
    from learner.checkpoint import archive_bytes
    from learner.learner import Learner
    from learner.spaces import SpacesSpec
    from service.run.spec import build_spec

    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    spec = build_spec(SPEC)
    learner = Learner(spaces, spec.policy, spec.a2c, spec.total_steps, seed=0)
    source = client.post("/jobs", json=SPEC).json()["id"]
    path = _place(store, data_dir, source, archive_bytes(learner.state(), spaces, "CartPole-v1",
                                                         spec.model_dump(mode="json")))
    r = client.post("/jobs", json={"resume_from": {"job_id": source}, "total_steps": 4096})
    assert r.status_code == 201, r.text
    resumed = r.json()["id"]
    client.post(f"/jobs/{source}/stop")  # only the resumed job may run
    path.write_bytes(cases[kind][0])  # tampered on disk while the job waits in the queue
    # The server restarts (a new manager on the same store) and admits the job: 4 stub CPUs;
    # no Ray is needed (the address leads nowhere), since reading the archive is the first
    # thing a job's driver does.
    manager = JobManager(store, JobLocations(data_dir), JobLimits(max_total_steps=100_000), cluster_cpus=lambda: 4.0,
                         ray_address="127.0.0.1:9")
    manager.start()
    try:
        deadline = time.monotonic() + 60
        while (job := store.get_job(resumed)).status == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        manager.shutdown(grace_s=5)
    assert job.status == "FAILED" and job.error_type == "CheckpointRejected", job
    assert cases[kind][1] in job.error
    assert not marker.exists()
    detail = client.get(f"/jobs/{resumed}").json()
    assert detail["error"]["type"] == "CheckpointRejected"


@pytest.mark.parametrize("path,param", [("/jobs", "maxresults"), ("/jobs/0123456789ab/metrics", "since"),
                                        ("/jobs/0123456789ab/checkpoints", "step")])
def test_unknown_query_parameters_are_422_naming_them(client, path, param):
    # A misspelt `since_step` must not silently return every row.
    r = client.get(path, params={param: "1"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", param]


def test_every_route_refuses_an_unknown_query_parameter(client):
    # Every router must use StrictQueryRoute: one without it would ignore the misspelling.
    paths = [path.replace("{job_id}", "0123456789ab").replace("{ckpt_id}", "latest")
             for path, ops in client.get("/openapi.json").json()["paths"].items() if "get" in ops]
    assert len(paths) >= 8, paths
    for path in [*paths, "/", "/docs", "/openapi.json"]:
        r = client.get(path, params={"bogus": "1"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "bogus"], (path, r.text)


def test_a_one_value_query_parameter_given_twice_is_422(client):
    r = client.get("/jobs", params=[("max_results", "1"), ("max_results", "2")])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "max_results"], r.text
    # status is repeatable by design
    assert client.get("/jobs", params=[("status", "PENDING"), ("status", "FAILED")]).status_code == 200
