"""/jobs/{id}/metrics and its server-sent event stream, on a real server."""

from __future__ import annotations

import json
import threading

METRIC_KEYS = {"step", "wall_s", "env_steps_per_s", "episode_return_mean", "episode_return_min",
               "episode_return_max", "episode_length_mean", "episodes", "policy_loss", "value_loss",
               "entropy", "loss", "grad_norm", "explained_variance", "learning_rate", "weights_version",
               "policy_lag"}


def test_rows_have_the_documented_keys_in_increasing_step_order(client, finished_job):
    rows = client.all_metrics(finished_job["id"])
    steps = [r["step"] for r in rows]
    assert len(rows) == 40 and steps == list(range(512, 20_480 + 1, 512))
    assert all(METRIC_KEYS <= set(r) for r in rows)
    assert ["eval_return_mean" in r for r in rows] == [False] * 39 + [True]  # eval rows only


def test_since_step_and_limit_page_through_the_rows(client, finished_job):
    url = f"/jobs/{finished_job['id']}/metrics"
    first = client.get(url, params={"limit": 5}).json()
    assert [r["step"] for r in first["rows"]] == [512, 1024, 1536, 2048, 2560]
    assert first["next_since_step"] == 2560 and first["status"] == "SUCCEEDED"
    rest = client.get(url, params={"since_step": first["next_since_step"], "limit": 10_000}).json()
    assert rest["rows"][0]["step"] == 3072 and len(first["rows"]) + len(rest["rows"]) == 40
    empty = client.get(url, params={"since_step": 10**9}).json()
    assert empty["rows"] == [] and empty["next_since_step"] == 10**9
    assert client.get(url, params={"limit": 0}).status_code == 422
    assert client.get(url, params={"since_step": -1}).status_code == 422


def test_stream_delivers_every_row_in_order_then_ends_with_the_status(client, finished_job):
    sse = finished_job["sse"]
    kinds = [kind for kind, _ in sse]
    assert kinds == ["metrics"] * 40 + ["end"]
    streamed = [data for kind, data in sse if kind == "metrics"]
    assert streamed == client.all_metrics(finished_job["id"])
    assert sse[-1][1] == {"status": "SUCCEEDED", "step": 20_480}


def test_stream_resumes_after_last_event_id(client, finished_job, sse_reader):
    url = f"/jobs/{finished_job['id']}/metrics/stream"
    with client.stream("GET", url, headers={"Last-Event-ID": "19456"}) as r:
        events = sse_reader(r)
    assert [d["step"] for k, d in events if k == "metrics"] == [19_968, 20_480]
    with client.stream("GET", url, params={"since_step": 20_480}) as r:
        assert [k for k, _ in sse_reader(r)] == ["end"]


def test_stream_of_a_running_job_is_live_and_api_keeps_answering(client, long_job, sse_reader):
    """While a job trains and one client streams, other requests are served (no blocked loop)."""
    job_id = client.post("/jobs", json=long_job).raise_for_status().json()["id"]
    events: list = []

    def consume() -> None:
        with client.stream("GET", f"/jobs/{job_id}/metrics/stream", timeout=300) as r:
            events.extend(sse_reader(r))

    reader = threading.Thread(target=consume)
    reader.start()
    client.wait_for(job_id, lambda j: j["progress"]["step"] >= 20 * 512)
    for _ in range(5):  # the API answers while training and streaming go on
        assert client.get("/healthz").status_code == 200
        assert client.get(f"/jobs/{job_id}").json()["status"] == "RUNNING"
    assert client.post(f"/jobs/{job_id}/stop").status_code == 202
    reader.join(300)
    assert not reader.is_alive()
    steps = [d["step"] for k, d in events if k == "metrics"]
    assert steps == sorted(set(steps)) and steps[0] == 512 and len(steps) >= 20
    assert events[-1] == ("end", {"status": "STOPPED", "step": steps[-1]})


def test_metrics_events_are_encoded_as_sse_starlette_encodes_them():
    from sse_starlette import ServerSentEvent

    from api.routes.metrics import metrics_event
    row = json.dumps({"step": 1536, "episode_return_mean": None, "note": "a\nb \u2028 \\r"})
    assert metrics_event(1536, row).encode() == ServerSentEvent(row, event="metrics", id="1536").encode()


class _CountingManager:
    """A JobManager stand-in for `metrics_events`: a running job whose rows grow between reads."""

    def __init__(self) -> None:
        self.reads, self.rows = 0, [{"step": 512 * (i + 1)} for i in range(3)]
        self.lock = threading.Lock()

    def metrics_json(self, job_id: str, since_step: int, limit: int):
        with self.lock:
            self.reads += 1
            rows = [(r["step"], json.dumps(r)) for r in self.rows if r["step"] > since_step][:limit]
        return _Job(finished=False), rows


class _Job:
    """The fields of a JobRow that `metrics_events` reads."""

    def __init__(self, finished: bool) -> None:
        self.finished, self.status, self.step = finished, "RUNNING", 0


def test_streams_of_one_job_share_each_store_read():
    import asyncio
    from api.routes.metrics import SharedReads, metrics_events

    manager, reads = _CountingManager(), SharedReads()

    async def follow(out: list) -> None:
        async for chunk in metrics_events(manager, "0123456789ab", 0, 0.2, reads):
            out.append(chunk)

    async def main() -> list[list]:
        outs = [[] for _ in range(20)]
        tasks = [asyncio.create_task(follow(out)) for out in outs]
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return outs

    outs = asyncio.run(main())
    # Every stream got the three rows, as one chunk of three events with their steps as ids.
    assert all(len(out) == 1 and out[0].count(b"event: metrics") == 3 and b"id: 1536" in out[0] for out in outs)
    # 20 streams over ~3 ticks: a handful of reads, not one per stream per tick.
    assert manager.reads <= 4, manager.reads
