"""The training driver end to end on the shared local Ray: learning, determinism, stop, resume."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from learner.checkpoint import read_archive
from service.spec import build_spec
from service.trainer import Trainer

pytestmark = pytest.mark.ray
TIMING_KEYS = {"wall_s", "env_steps_per_s"}


class Recorder:
    """A sink that keeps everything it is told."""

    def __init__(self):
        self.rows, self.events, self.checkpoints = [], [], []

    def event(self, kind, message):
        self.events.append((kind, message))

    def metrics(self, row):
        self.rows.append(row)

    def checkpoint(self, info):
        self.checkpoints.append(info)


SMALL = {"env": "CartPole-v1", "workers": 2, "envs_per_worker": 4, "eval_every": 0,
         "a2c": {"steps_per_batch": 256}}


def test_trainer_learns_cartpole(ray_session, tmp_path):
    spec = build_spec({"env": "CartPole-v1", "total_steps": 80_000, "workers": 2, "seed": 0,
                       "eval_every": 0})
    sink = Recorder()
    summary = Trainer(spec, tmp_path, sink).run()
    first = np.mean([r["episode_return_mean"] for r in sink.rows[:3]])
    # A random CartPole policy averages ~22; learning shows as a several-fold improvement.
    assert summary["final_return_mean"] > max(150, 4 * first), (first, summary)
    assert sink.rows[-1]["eval_return_mean"] > 150
    assert summary["status"] == "SUCCEEDED" and summary["steps"] >= 80_000
    assert ("device", "cpu: no GPU in the cluster") in sink.events


def test_metrics_rows_have_the_documented_keys(ray_session, tmp_path):
    spec = build_spec({**SMALL, "total_steps": 1024, "eval_every": 2})
    sink = Recorder()
    Trainer(spec, tmp_path, sink).run()
    keys = {"step", "wall_s", "env_steps_per_s", "episode_return_mean", "episode_return_min",
            "episode_return_max", "episode_length_mean", "episodes", "policy_loss", "value_loss",
            "entropy", "loss", "grad_norm", "explained_variance", "learning_rate",
            "weights_version", "policy_lag"}
    assert len(sink.rows) == 4
    assert all(keys <= set(row) for row in sink.rows)
    assert [r["step"] for r in sink.rows] == [256, 512, 768, 1024]
    assert [("eval_return_mean" in r) for r in sink.rows] == [False, True, False, True]
    assert all(r["policy_lag"] == 0 for r in sink.rows)


def test_same_seed_same_layout_gives_the_same_first_rows(ray_session, tmp_path):
    def first_rows(out):
        sink = Recorder()
        Trainer(build_spec({**SMALL, "total_steps": 5 * 256, "seed": 7}), out, sink).run()
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in sink.rows[:5]]

    assert first_rows(tmp_path / "a") == first_rows(tmp_path / "b")


class StopAfter(Recorder):
    """Requests a stop once `n` rows have arrived, as `POST /jobs/{id}/stop` would."""

    def __init__(self, n):
        super().__init__()
        self.n, self.trainer = n, None

    def metrics(self, row):
        super().metrics(row)
        if len(self.rows) == self.n:
            self.trainer.request_stop()


def test_stop_request_ends_with_a_final_checkpoint(ray_session, tmp_path):
    sink = StopAfter(3)
    sink.trainer = Trainer(build_spec({**SMALL, "total_steps": 10_000_000}), tmp_path, sink)
    summary = sink.trainer.run()
    assert summary["status"] == "STOPPED" and summary["steps"] == 3 * 256
    assert sink.checkpoints[-1].step == 3 * 256
    assert read_archive(summary["checkpoint"]).state.step == 3 * 256


def test_resume_continues_step_count_weights_and_schedule(ray_session, tmp_path):
    spec = build_spec({**SMALL, "total_steps": 1024, "checkpoint_every": 2,
                       "a2c": {"steps_per_batch": 256, "learning_rate_schedule": "linear"}})
    first = Recorder()
    Trainer(spec, tmp_path / "a", first).run()
    mid = next(c for c in first.checkpoints if c.step == 512)
    resumed = Recorder()
    summary = Trainer(spec, tmp_path / "b", resumed, resume=read_archive(mid.path)).run()
    assert [r["step"] for r in resumed.rows] == [768, 1024]
    assert [r["weights_version"] for r in resumed.rows] == [3, 4]
    assert [r["learning_rate"] for r in resumed.rows] == [r["learning_rate"] for r in first.rows[2:]]
    assert summary["steps"] == 1024


def test_too_many_workers_fail_before_any_actor_starts(ray_session, tmp_path):
    from service.spec import InvalidSpec
    with pytest.raises(InvalidSpec) as err:
        Trainer(build_spec({**SMALL, "workers": 64, "a2c": {"steps_per_batch": 512}}), tmp_path).run()
    assert err.value.field == "workers" and "64 workers" in err.value.message


def test_async_mode_reports_a_policy_lag_of_one(ray_session, tmp_path):
    sink = Recorder()
    summary = Trainer(build_spec({**SMALL, "total_steps": 4 * 256, "mode": "async"}), tmp_path, sink).run()
    assert [r["policy_lag"] for r in sink.rows] == [0, 1, 1, 1]
    assert [r["step"] for r in sink.rows] == [256, 512, 768, 1024] and summary["steps"] == 1024


class KillWorkerAfter(Recorder):
    """Kills rollout worker 1 after `n` rows, with ray.kill or SIGKILL of its process."""

    def __init__(self, n, how):
        super().__init__()
        self.n, self.how, self.trainer = n, how, None

    def metrics(self, row):
        super().metrics(row)
        if len(self.rows) == self.n:
            import os
            import signal

            import ray
            victim = self.trainer.workers[1]
            if self.how == "ray.kill":
                ray.kill(victim)
            else:
                pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_killed_worker_is_replaced_and_no_rollout_is_lost_or_doubled(ray_session, tmp_path, how):
    sink = KillWorkerAfter(2, how)
    sink.trainer = Trainer(build_spec({**SMALL, "total_steps": 6 * 256}), tmp_path, sink)
    summary = sink.trainer.run()
    assert summary["status"] == "SUCCEEDED" and summary["steps"] == 6 * 256
    assert [r["step"] for r in sink.rows] == [256 * k for k in range(1, 7)]
    assert [r["weights_version"] for r in sink.rows] == list(range(1, 7))
    assert any(kind == "worker_replaced" and "worker 1 died" in msg for kind, msg in sink.events)
