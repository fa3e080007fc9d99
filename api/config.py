"""`Settings`: the API server's configuration, read from `A2C_*` environment variables."""

from __future__ import annotations

import errno
import os
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_ray_cpus() -> int:
    # A 2-worker job needs 3 actors of 1 CPU each; they mostly wait on each other, so a
    # 2-core machine runs one fine with 4 logical CPUs declared.
    return max(os.cpu_count() or 1, 4)


class Settings(BaseSettings):
    """Server settings; each field is also the environment variable `A2C_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="A2C_", frozen=True, use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Interface to bind; the default keeps the API on this machine."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port."""
    data_dir: Path = Path("a2c-data")
    """Job database (jobs.sqlite3), and each job's checkpoints (jobs/<id>/checkpoints/) unless
    `storage` says otherwise."""
    storage: str | None = None
    """Where job checkpoints go: a path, a file:// URI or an fsspec/pyarrow URI such as
    s3://bucket/prefix (archives land in <storage>/<job id>/checkpoints/); default
    <data_dir>/jobs. The job database always stays in data_dir."""
    address: str | None = None
    """Ray cluster to join (auto, host:port, ray://...); default RAY_ADDRESS, else embedded Ray."""
    api_token: SecretStr | None = None
    """When set, every route but /healthz and the dashboard's page (/, /static) needs
    `Authorization: Bearer <token>`."""
    max_total_steps: int = Field(50_000_000, ge=1)
    """Largest total_steps a job may ask for."""
    max_workers_per_job: int = Field(64, ge=1)
    """Most rollout workers one job may ask for."""
    max_concurrent_jobs: int = Field(4, ge=1)
    """Jobs running at once; more wait in PENDING."""
    max_body_bytes: int = Field(1 << 20, ge=1024)
    """Largest request body accepted (413 above)."""
    ray_num_cpus: int = Field(default_factory=_default_ray_cpus, ge=1)
    """Logical CPUs of the embedded Ray (ignored when joining a cluster)."""
    resource_timeout_s: float = Field(600.0, gt=0)
    """How long a job's actors may wait for cluster resources before the job fails: at start, and
    for the replacement of a rollout worker lost with its node."""
    max_recoveries: int = Field(3, ge=0)
    """Times a job RUNNING when the server died is resumed before it is marked FAILED."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On shutdown, how long running jobs get to write a final checkpoint."""
    sse_poll_s: float = Field(0.5, gt=0)
    """How often a metrics stream looks for new rows."""
    request_nice: int = Field(10, ge=0, le=19)
    """How much lower than training the CPU priority of request handling is (a Linux nice
    increment): on a machine that also trains, a burst of clients slows the responses, not
    the jobs. 0 when the API has its own machine."""

    warm_jobs: bool | None = None
    """Keep a spare job driver with warm rollout-worker and learner processes for the next job
    (they hold no CPUs; about 1 GB of memory): a small job's first metrics row comes in well
    under a second instead of several. Default: on with an embedded Ray, off on a cluster
    (where warm actors, which reserve no CPU, could crowd one node)."""
    request_read_timeout_s: float = Field(30.0, gt=0)
    """How long a request may take to arrive whole (headers and body, from its first byte or the
    connection's opening); after it the server answers 408 and closes the connection."""
    keep_alive_s: float = Field(5.0, gt=0)
    """How long an idle keep-alive connection stays open between requests."""
    max_connections: int = Field(1000, ge=2)
    """Open connections (and requests in progress) at most; above it, requests get 503."""
    act_cache_mb: int = Field(256, ge=0)
    """Memory for policies loaded by `POST /jobs/{id}/checkpoints/{ckpt}/act`, in MB of their
    parameters: the least recently used are dropped to stay under it (0 keeps none)."""
    act_max_batch: int = Field(1024, ge=1)
    """Most observations one act request may carry."""
    max_streams: int = Field(500, ge=1)
    """Metrics streams open at once at most (a new one gets 503 with Retry-After); kept below
    max_connections so that streams alone cannot take every connection from other requests."""

    @model_validator(mode="after")
    def _streams_leave_room(self) -> "Settings":
        if self.max_streams >= self.max_connections:
            raise ValueError(f"A2C_MAX_STREAMS ({self.max_streams}) must be below A2C_MAX_CONNECTIONS "
                             f"({self.max_connections}), so that streams leave room for other requests")
        return self

    @field_validator("api_token", "storage", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value in ("", None) else value


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment, read once."""
    return Settings()


def settings_from_args(args) -> Settings:
    """The settings of `a2c serve`: the `A2C_*` environment, overridden by the flags given."""
    overrides = {name: getattr(args, name, None) for name in ("host", "port", "data_dir", "address", "storage")}
    return get_settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})


def port_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on host:port (in use, no such address, not allowed), or
    None. Binds as uvicorn does (SO_REUSEADDR), so a port in TIME_WAIT is not refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}; pass --host with a local address"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another `a2c serve`?): stop it, or pass "
                        f"--port with a free port")
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None
