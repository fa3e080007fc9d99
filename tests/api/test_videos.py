"""/jobs/{id}/videos on a real server with a token: the list, MP4 downloads with Range, 404s,
401s, and ids that could climb out of the job's directory."""

from __future__ import annotations

import imageio.v3 as iio
import pytest

from tests.api.conftest import start_server

TOKEN = "video-test-token"
VIDEO_JOB = {"env": "CartPole-v1", "total_steps": 4096, "workers": 1, "envs_per_worker": 4,
             "a2c": {"steps_per_batch": 512}, "eval_every": 2, "eval_episodes": 2, "video_every": 1}
"""8 updates, evaluated (and so recorded) after updates 2, 4, 6 and 8."""


@pytest.fixture(scope="module")
def video_server(tmp_path_factory):
    server = start_server(tmp_path_factory, token=TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(video_server):
    with video_server.client() as c:
        yield c


@pytest.fixture(scope="module")
def video_job(api) -> dict:
    job_id = api.post("/jobs", json=VIDEO_JOB).raise_for_status().json()["id"]
    job = api.wait_finished(job_id)
    assert job["status"] == "SUCCEEDED", job
    return job


def test_videos_are_listed_in_step_order_the_last_evaluation_always_among_them(api, video_job):
    job_id = video_job["id"]
    listed = api.get(f"/jobs/{job_id}/videos").json()
    assert listed["job_id"] == job_id
    videos = listed["videos"]
    steps = [v["step"] for v in videos]
    # One recording at a time: a due one may give way to a newer one, never the last.
    assert steps == sorted(steps) and steps[-1] == 4096 and set(steps) <= {1024, 2048, 3072, 4096}
    messages = [e["message"] for e in video_job["events"] if e["kind"] == "video"]
    assert len(messages) == len(videos)
    assert len(videos) + sum(int(m.split("; ")[1].split()[0]) for m in messages if "gave way" in m) == 4
    for v in videos:
        assert v["id"] == f"step-{v['step']:010d}" and v["url"] == f"/jobs/{job_id}/videos/{v['id']}"
        assert v["frames"] == v["length"] + 1 == v["return"] + 1 and v["fps"] == 50 and v["complete"] is True
        assert v["size_bytes"] > 0


def test_a_video_downloads_as_an_inline_mp4_that_plays(api, video_job, tmp_path):
    job_id = video_job["id"]
    last = api.get(f"/jobs/{job_id}/videos").json()["videos"][-1]
    r = api.get(last["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.headers["content-disposition"] == f'inline; filename="{job_id}-{last["id"]}.mp4"'
    assert r.headers["accept-ranges"] == "bytes" and len(r.content) == last["size_bytes"]
    path = tmp_path / "video.mp4"
    path.write_bytes(r.content)
    assert iio.imread(path).shape == (last["frames"], 400, 600, 3)


def test_range_requests_get_206_with_content_range(api, video_job):
    last = api.get(f"/jobs/{video_job['id']}/videos").json()["videos"][-1]
    whole = api.get(last["url"]).content
    r = api.get(last["url"], headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    assert r.content == whole[:100]
    r = api.get(last["url"], headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    assert r.content == whole[100:]
    r = api.get(last["url"], headers={"Range": f"bytes={len(whole) + 10}-"})
    assert r.status_code == 416


def test_unknown_jobs_and_videos_are_404(api, video_job):
    job_id = video_job["id"]
    assert api.get(f"/jobs/{job_id}/videos/step-0000000001").status_code == 404
    assert api.get("/jobs/000000000000/videos").status_code == 404
    assert api.get("/jobs/000000000000/videos/step-0000004096").status_code == 404
    r = api.post("/jobs", json={**VIDEO_JOB, "video_every": 0, "total_steps": 512})
    quiet = r.raise_for_status().json()["id"]
    api.wait_finished(quiet)
    assert api.get(f"/jobs/{quiet}/videos").json()["videos"] == []


def test_ids_that_are_not_video_ids_are_refused_and_nothing_outside_is_served(api, video_job, video_server):
    job_id = video_job["id"]
    for bad in ("..%2F..%2Fjobs.sqlite3", "%2E%2E", "step-0000004096.json", "step-0000004096.mp4", "latest",
                "step-0000004096%00", "%2Fetc%2Fpasswd", "step-12"):
        r = api.get(f"/jobs/{job_id}/videos/{bad}")
        assert r.status_code in (404, 422), (bad, r.status_code)
        assert r.headers["content-type"] != "video/mp4"
    # A video whose MP4 is a symlink out of the job's directory is not served, sidecar or not.
    videos = video_server.data_dir / "jobs" / job_id / "videos"
    (videos / "step-0000000007.mp4").symlink_to(video_server.data_dir / "jobs.sqlite3")
    (videos / "step-0000000007.json").write_text('{"step": 7, "return": 1.0, "length": 1, "frames": 2, '
                                                  '"fps": 50, "size": 1, "complete": true}')
    assert api.get(f"/jobs/{job_id}/videos/step-0000000007").status_code == 404


def test_without_the_token_every_video_route_is_401(video_server, video_job):
    job_id = video_job["id"]
    with video_server.client(token="") as anonymous, video_server.client(token="wrong") as wrong:
        for c in (anonymous, wrong):
            assert c.get(f"/jobs/{job_id}/videos").status_code == 401
            assert c.get(f"/jobs/{job_id}/videos/step-0000004096").status_code == 401
            assert c.get(f"/jobs/{job_id}/videos/step-0000004096", headers={"Range": "bytes=0-9"}).status_code == 401
