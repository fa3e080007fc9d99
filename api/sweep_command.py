"""`a2c sweep --config sweep.yaml`: run a hyperparameter sweep and follow it to its end.

A sweep is the job service's (service/sweeps): its trials are jobs, scheduled with the
server's limits. So the command is a client of a server: the one at `--server`, or one it
runs in this process for the sweep's length, on a free loopback port with an embedded Ray and
`--data-dir` (as `a2c train` runs one job on an embedded Ray). It prints progress on stderr
and ends with one JSON line on stdout: the sweep's outcome and its best trial. Ctrl-C stops
the sweep (every trial job stops with a final checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from service.run.spec import InvalidSpec
from service.sweeps.trial import ServiceClient, TrialFailed

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep command's flags."""
    p.add_argument("--config", type=Path, required=True,
                   help="YAML/JSON sweep: base, space, num_samples, ... (the body of POST /sweeps; docs/sweeps.md)")
    p.add_argument("--server", metavar="URL", default=os.environ.get("A2C_SERVER"),
                   help="a running `a2c serve` to run the sweep on (default A2C_SERVER; else one in this "
                        "process, with an embedded Ray)")
    p.add_argument("--token", default=None, help="that server's A2C_API_TOKEN (default: the A2C_API_TOKEN variable)")
    p.add_argument("--data-dir", type=Path, default=Path("a2c-data"),
                   help="without --server: where the sweep's jobs, metrics and checkpoints go (default a2c-data)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between progress reads")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def embedded_server(data_dir: Path) -> Iterator[str]:
    """An `a2c serve` in a thread of this process, on a free loopback port; yields its URL."""
    import uvicorn

    from api.app import create_app
    from api.config import get_settings
    from api.server import server_config

    settings = get_settings().model_copy(update={"host": "127.0.0.1", "port": _free_port(),
                                                 "data_dir": data_dir, "api_token": None})
    server = uvicorn.Server(server_config(create_app(settings), settings))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # the trials' polls: not for this terminal
    thread = threading.Thread(target=server.run, name="embedded-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the embedded server did not start (see the messages above)")
        time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(120)


def _progress(sweep: dict[str, Any]) -> str:
    trials = sweep.get("trials", [])
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    metric = sweep["spec"]["metric"]
    best = sweep.get("best_trial")
    line = (f"sweep {sweep['id']} {sweep['status']}: {len(trials)}/{sweep['spec']['num_samples']} trials ("
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")")
    if sweep.get("trial_errors"):
        line += f", {len(sweep['trial_errors'])} errored"
    if best:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["config"].items())
        line += f"; best {metric} {best['best_metric']:.4g} (job {best['job_id']}: {values})"
    return line


def follow(client: ServiceClient, raw: dict[str, Any], poll_s: float) -> dict[str, Any]:
    """Submit the sweep, show its progress until it ends (Ctrl-C stops it); returns its last state."""
    sweep = client.call("POST", "/sweeps", raw)
    print(f"sweep {sweep['id']} submitted to {client.url}", file=sys.stderr)
    last = ""
    try:
        while True:
            sweep = client.call("GET", f"/sweeps/{sweep['id']}")
            line = _progress(sweep)
            if line != last:
                print(line, file=sys.stderr)
                last = line
            if sweep["status"] in TERMINAL:
                return sweep
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"stopping sweep {sweep['id']} (its trial jobs write a final checkpoint)...", file=sys.stderr)
        client.call("POST", f"/sweeps/{sweep['id']}/stop")
        while sweep["status"] not in TERMINAL:
            time.sleep(1.0)
            sweep = client.call("GET", f"/sweeps/{sweep['id']}")
        return sweep


def run(args: argparse.Namespace) -> int:
    """`a2c sweep`: exit 0 when the sweep SUCCEEDED, 1 otherwise, 2 for a refused sweep."""
    try:
        raw = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidSpec("config", f"{args.config} cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidSpec("config", f"{args.config} must hold a mapping: base, space, num_samples, ...")
    started = time.monotonic()
    try:
        if args.server:
            token = args.token or os.environ.get("A2C_API_TOKEN") or None
            sweep = follow(ServiceClient(args.server, token, retry_s=10), raw, args.poll)
        else:
            with embedded_server(args.data_dir) as url:
                sweep = follow(ServiceClient(url, retry_s=10), raw, args.poll)
    except TrialFailed as exc:  # the server refused the sweep, or did not answer
        print(f"a2c: {exc}", file=sys.stderr)
        return 2 if "HTTP 422" in str(exc) else 1
    best = sweep.get("best_trial") or {}
    print(json.dumps({
        "sweep_id": sweep["id"], "status": sweep["status"], "message": sweep.get("message"),
        "trials": len(sweep.get("trials", [])), "trial_errors": len(sweep.get("trial_errors", {})),
        "metric": sweep["spec"]["metric"], "best_metric": best.get("best_metric"), "best_job_id": best.get("job_id"),
        "best_config": best.get("config"), "best_checkpoint": (best.get("checkpoint") or {}).get("id"),
        "wall_s": round(time.monotonic() - started, 1)}), flush=True)
    return 0 if sweep["status"] == "SUCCEEDED" else 1
