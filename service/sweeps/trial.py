"""`follow_trial_job`: the Ray Tune function trainable of a sweep's trials.

Each Tune trial is one job of the job service. The trainable runs in a Ray actor that holds no
CPU (the job's own actors reserve the CPUs, through the job service's scheduler), on the API
server's node, and is a client of the server's HTTP API on loopback: it asks for its trial's
job (`POST /sweeps/{id}/trials`, idempotent by trial id, so the job exists once), then reads
the job's new metrics rows every `poll_s` and reports the newest row that carries the sweep's
metric to Tune, with `step` (env steps) as the time attribute ASHA counts in. It returns when the job
ends, and raises when the job FAILED, so Tune records the trial as errored (and the search
algorithm hears of the failure) without ending the sweep.

When Tune ends a trial early (ASHA) it just drops the trainable; the sweep's Tune callback in
the server (`service.sweeps.manager`) then stops the job, with the reason. This module is
imported by the trial's Ray worker: it keeps to the standard library and `ray.tune`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class TrialFailed(RuntimeError):
    """The trial's job could not be made, failed, or the server could not be reached (also a
    refused request of `ServiceClient`)."""


@dataclass(frozen=True)
class ServiceClient:
    """A small JSON client of the job service's HTTP API (standard library only)."""

    url: str
    token: str | None = None
    retry_s: float = 60.0
    """How long a call keeps retrying while the server does not answer (or answers 503)."""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON request; raises TrialFailed with the server's detail on an HTTP error."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + self.retry_s
        while True:
            request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 503 and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise TrialFailed(f"{method} {path}: HTTP {exc.code}: {_detail(exc)}") from None
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise TrialFailed(f"{method} {path}: the server at {self.url} did not answer: {exc}") from None
                time.sleep(1.0)


@dataclass(frozen=True)
class TrialApi(ServiceClient):
    """How a trial reaches its server (loopback), and its sweep and metric."""

    sweep_id: str = ""
    metric: str = "eval_return_mean"
    poll_s: float = 1.0


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, OSError, AttributeError):
        return exc.reason
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number JSON can carry."""
    return value.item() if hasattr(value, "item") else value


def follow_trial_job(config: dict[str, Any], api: TrialApi) -> None:
    """Run one trial: get its job, report its metric rows to Tune until it ends."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    job = api.call("POST", f"/sweeps/{api.sweep_id}/trials",
                   {"trial_id": trial_id, "config": {k: _plain(v) for k, v in config.items()}})
    job_id, since = job["id"], 0
    while True:
        page = api.call("GET", f"/jobs/{job_id}/metrics?since_step={since}&limit=1000")
        # The newest row with the metric only: ASHA judges a trial by its first result past each
        # rung, and every report is a round trip to the Tune controller in the API server.
        scored = [r for r in page["rows"] if isinstance(r.get(api.metric), (int, float))
                  and not isinstance(r.get(api.metric), bool)]
        if scored:
            tune.report({"step": scored[-1]["step"], api.metric: scored[-1][api.metric], "job_id": job_id})
        since = page["next_since_step"]
        if page["status"] in TERMINAL and not page["rows"]:  # read after the end: nothing more comes
            break
        if not page["rows"]:
            time.sleep(api.poll_s)
    if page["status"] == "FAILED":
        error = api.call("GET", f"/jobs/{job_id}").get("error") or {}
        raise TrialFailed(f"job {job_id} FAILED: {error.get('type', 'Error')}: {error.get('message', '')}")
