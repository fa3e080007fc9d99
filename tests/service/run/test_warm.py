"""Warm actors (service.run.warm) behave exactly as cold ones: a job configured onto them trains
the same rows, and no state crosses from one job to the next (each actor serves one job)."""

from __future__ import annotations

import pytest
import ray

from service.run.loop import Trainer
from service.run.spec import build_spec
from service.run.warm import WarmActors
from tests.service.run.test_loop import TIMING_KEYS, Recorder

pytestmark = pytest.mark.ray

JOB = {"env": "CartPole-v1", "total_steps": 4096, "workers": 2, "envs_per_worker": 4, "seed": 3,
       "eval_every": 4, "eval_episodes": 2, "a2c": {"steps_per_batch": 256}}


def rows_without_timing(sink: Recorder) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in sink.rows]


def test_a_job_on_warm_actors_trains_the_same_rows_as_on_new_ones(ray_session, tmp_path):
    spec = build_spec(JOB)
    cold = Recorder()
    Trainer(spec, tmp_path / "cold", cold).run()
    for run in range(2):  # two jobs in a row, each on a set of warm actors of its own
        warm = Recorder()
        trainer = Trainer(spec, tmp_path / f"warm{run}", warm, warm=WarmActors.start(workers=2))
        trainer.run()
        assert rows_without_timing(warm) == rows_without_timing(cold)


def test_each_warm_actor_serves_one_job_and_extra_ones_are_ended(ray_session, tmp_path):
    warm = WarmActors.start(workers=3)
    spare = warm.workers[-1]
    trainer = Trainer(build_spec(JOB), tmp_path, Recorder(), warm=warm)
    summary = trainer.run()
    assert summary["status"] == "SUCCEEDED"
    assert warm.learner is None and warm.workers == []  # all taken or ended
    assert ended(spare)  # the third worker was not needed
    assert ended(trainer.learner)  # the job's actors ended with it


def ended(actor, timeout_s: float = 60.0) -> bool:
    """Whether the actor is gone within `timeout_s` (ray.kill takes effect asynchronously)."""
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_call__.remote(lambda self: None), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.5)
    return False


def test_a_job_with_more_workers_than_warm_ones_starts_the_rest_new(ray_session, tmp_path):
    spec = build_spec({**JOB, "workers": 3, "a2c": {"steps_per_batch": 384}})
    cold = Recorder()
    Trainer(spec, tmp_path / "cold", cold).run()
    mixed = Recorder()
    Trainer(spec, tmp_path / "mixed", mixed, warm=WarmActors.start(workers=1)).run()
    assert rows_without_timing(mixed) == rows_without_timing(cold)
