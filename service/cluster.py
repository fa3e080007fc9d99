"""Connecting to Ray: an embedded local instance by default, or an existing cluster.

Where the cluster is, in order: the `address` argument (`auto`, `host:port`, `ray://host:10001`),
then RAY_ADDRESS (which `ray job submit` sets for the job's driver), else an embedded local Ray
that lives and dies with this process.

Token authentication (Ray >= 2.52; `ray start --head` turns it on when a token exists, and
`ray.init()` of an embedded instance always does): every process that talks to the cluster
needs RAY_AUTH_MODE=token and the cluster's token, from RAY_AUTH_TOKEN, the file named by
RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token. Ray turns token mode on by itself only for
`address="auto"`; for an explicit address or RAY_ADDRESS, `connect` does it when a token is
available, and a refused connection is reported with what to set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

import ray

log = logging.getLogger(__name__)

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
"""Where `ray start --head`, `ray.init()` and `ray get-auth-token --generate` keep the token."""


TRAINING_NICENESS = 0
"""The CPU priority (Linux nice value) of an embedded Ray's worker processes: the learner's and
the rollout workers'.

Ray starts its worker processes at nice 15 (`worker_niceness`), below its own daemons. Here the
actors are the work: at 15 they lose the CPU to anything at the default 0, including the API
server's request handling, which `A2C_REQUEST_NICE` puts at +10 on purpose, to yield to
training. A cluster started with `ray start` keeps its own setting; start it with
`RAY_worker_niceness=0` in the environment for the same order. (Set per actor instead, in its
runtime env, it would cost each actor a worker process started only when the actor is asked
for, instead of one Ray started ahead.)
"""


_embedded = False
"""Whether `connect` started the Ray this process is on."""


def embedded() -> bool:
    """Whether this process started the Ray it is connected to (an embedded local Ray)."""
    return _embedded


class ClusterUnreachable(ConnectionError):
    """The Ray cluster named by the address could not be joined; the message says what to fix."""


def auth_token() -> str | None:
    """The Ray auth token this process would present: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token, in Ray's own order of precedence; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]) if os.environ.get("RAY_AUTH_TOKEN_PATH") else DEFAULT_TOKEN_PATH
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def _enable_token_auth_if_possible() -> None:
    """Turn on token mode when RAY_AUTH_MODE is unset and a token is at hand.

    Ray does this itself only for address="auto". Setting the variable is not enough once
    `ray` is imported: its C++ config has already read the mode, so reload it as Ray does.
    """
    if "RAY_AUTH_MODE" in os.environ or auth_token() is None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:  # a Ray without token auth: nothing to turn on
        return
    _enable_token_auth()


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Make sure this process is a Ray driver; returns a description of the cluster it joined.

    With no address and no RAY_ADDRESS, start an embedded local Ray that dies with this
    process. `num_cpus` sets the embedded instance's logical CPUs (ignored for a cluster).
    Raises ClusterUnreachable, naming the address and the likely fix, when joining fails.
    """
    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # "local", not None: None would join whatever `ray start` last ran on this machine (and
        # then refuse num_cpus), which is not what a user who gave no address asked for.
        with _QuietStart():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, configure_logging=False,
                     _system_config={"worker_niceness": TRAINING_NICENESS})
        global _embedded
        _embedded = True
        from service import reaper
        reaper.start(ray._private.worker._global_node.get_session_dir_path(), os.path.dirname(ray.__file__))
        return f"embedded local Ray ({_resources()})"
    _enable_token_auth_if_possible()
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ray.exceptions.AuthenticationError as exc:
        raise ClusterUnreachable(
            f"the Ray cluster at {address} refused this process's token ({_first_line(exc)}); "
            f"set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or "
            f"{DEFAULT_TOKEN_PATH} (on the head node: `ray get-auth-token`)") from None
    except ConnectionError as exc:
        if address == "auto":
            hint = "no running cluster was found on this machine; start one with `ray start --head` or pass --address"
        else:
            # A wrong token looks the same from here: GCS keeps answering "Unauthenticated".
            hint = ("is the head node up, its port reachable, and this process's token the cluster's? "
                    f"(RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', 'unset')}; token from RAY_AUTH_TOKEN, "
                    f"RAY_AUTH_TOKEN_PATH or {DEFAULT_TOKEN_PATH})")
        raise ClusterUnreachable(f"cannot join the Ray cluster at {address}: {_first_line(exc)}; {hint}") from None
    return f"cluster at {address} ({_resources()})"


class _QuietStart(logging.Filter):
    """Drops two of Ray's start-up warnings that say nothing to act on here: that an embedded
    instance turned token auth on (it is on loopback, and `connect` handles tokens), and that a
    `ray.init` off the main thread sets no SIGTERM handler (`connect_in_background`: the train
    command sets its own)."""

    MESSAGES = ("Token authentication is enabled for this Ray cluster",
                "SIGTERM handler is not set")
    LOGGERS = ("ray._private.worker", "ray._private.authentication.authentication_token_setup")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.MESSAGES)

    def __enter__(self) -> "_QuietStart":
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def connect_in_background(address: str | None = None,
                          num_cpus: int | None = None) -> Callable[[], tuple[str, float]]:
    """Start `connect` on a thread and return a function that waits for it: it returns what
    `connect` returns and the seconds connecting took (not counting the wait), or raises what
    `connect` raised.

    Joining or starting Ray is mostly waiting on its daemons (an embedded instance's GCS and
    raylet: seconds), which the caller overlaps with its own start-up work (importing torch,
    making an env to check the job against). Signals reach the main thread only, so until the
    caller sets handlers of its own, SIGINT/SIGTERM act as usual.

    The thread never ends (a daemon thread, idle once connected): Ray ties an embedded
    instance's daemons to the thread that started them (Linux's parent-death signal is per
    thread), so they would die with it.
    """
    done, outcome = threading.Event(), {}

    def run() -> None:
        started = time.monotonic()
        try:
            with _QuietStart():
                outcome["where"] = connect(address, num_cpus)
            outcome["took"] = time.monotonic() - started
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            outcome["error"] = exc
        done.set()
        threading.Event().wait()  # keep the thread, and with it the embedded Ray's daemons

    threading.Thread(target=run, name="ray-connect", daemon=True).start()

    def wait() -> tuple[str, float]:
        done.wait()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["where"], outcome["took"]
    return wait


def disconnect() -> None:
    """Leave Ray; for an embedded instance, also end its daemons (what `ray.shutdown` does).

    Ray ends an embedded instance's daemons one after another, each given up to a second to
    answer SIGTERM. Its autoscaler monitor, which has nothing to scale on one machine, uses that
    whole second, so it is killed first; killed, it cannot report its end, so nothing is printed
    about it (docs/benchmarks.md, "Start-up and exit", has the timings).
    """
    global _embedded
    if _embedded:
        node = getattr(ray._private.worker, "_global_node", None)
        for info in (node.all_processes.get("monitor", []) if node is not None else []):
            with contextlib.suppress(OSError):
                info.process.kill()
        _embedded = False
    ray.shutdown()


def driver_address(address: str | None = None) -> str:
    """The address another driver on this machine joins this process's cluster by: the one this
    process was given (or RAY_ADDRESS), else its embedded instance's GCS address."""
    return address or os.environ.get("RAY_ADDRESS") or ray.get_runtime_context().gcs_address


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _resources() -> str:
    """E.g. "3 nodes, 5 CPUs, 1 GPU"."""
    total = ray.cluster_resources()
    counts = {"node": sum(1 for n in ray.nodes() if n.get("Alive")),
              "CPU": int(total.get("CPU", 0)), "GPU": int(total.get("GPU", 0))}
    return ", ".join(f"{n} {name}{'s' * (n != 1)}" for name, n in counts.items())


def cluster_cpus() -> float:
    """Total logical CPUs of the connected Ray cluster."""
    return float(ray.cluster_resources().get("CPU", 0))


def cluster_has_gpu() -> bool:
    """Whether any node of the cluster advertises a GPU."""
    return ray.cluster_resources().get("GPU", 0) >= 1
