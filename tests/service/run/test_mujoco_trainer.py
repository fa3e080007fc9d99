"""A short MuJoCo run end to end on the shared local Ray: the tuned values, checkpoints, metrics,
a resume from the checkpoint, and `a2c evaluate` of it. No score is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from service.run.spec import build_spec
from service.run.checkpoints import read_checkpoint
from service.run.loop import Trainer
from workers.evaluate import evaluate_policy

pytest.importorskip("mujoco", reason="needs the mujoco extra: pip install -e '.[mujoco]'")
pytestmark = pytest.mark.ray


class Recorder:
    """A sink that keeps the rows and checkpoints it is told of."""

    def __init__(self):
        self.rows, self.events, self.checkpoints = [], [], []

    def event(self, kind, message):
        self.events.append((kind, message))

    def metrics(self, row):
        self.rows.append(row)

    def checkpoint(self, info):
        self.checkpoints.append(info)

    def rewind(self, step):
        self.rows = [r for r in self.rows if r["step"] <= step]


def test_hopper_trains_with_its_tuned_values_resumes_and_evaluates(ray_session, tmp_path):
    spec = build_spec({"env": "Hopper-v5", "total_steps": 2000, "workers": 1, "seed": 0,
                       "eval_every": 25, "eval_episodes": 2, "checkpoint_every": 25})
    assert {"a2c.optimizer", "a2c.normalize_rewards", "policy.normalize_observations"} <= set(spec.tuned)
    batch = spec.a2c.steps_per_batch
    sink = Recorder()
    summary = Trainer(spec, tmp_path / "a", sink).run()
    assert summary["status"] == "SUCCEEDED" and summary["steps"] == spec.num_updates * batch
    assert [r["step"] for r in sink.rows] == [batch * (i + 1) for i in range(spec.num_updates)]
    # Hopper falls within a few dozen steps of a random policy: episodes end, and are counted.
    assert sum(r["episodes"] for r in sink.rows) > 0 and sink.rows[-1]["episode_return_mean"] is not None
    assert all(np.isfinite(r["value_loss"]) for r in sink.rows) and "eval_return_mean" in sink.rows[-1]

    ckpt = read_checkpoint(summary["checkpoint"])
    assert ckpt.env_id == "Hopper-v5" and ckpt.state.step == summary["steps"]
    assert ckpt.config["a2c"]["optimizer"] == "rmsprop" and ckpt.state.reward_norm is not None
    assert float(ckpt.state.weights.tensors["obs_norm.count"]) >= summary["steps"]

    # Resume: the optimizer state and statistics come back, the steps continue.
    more = build_spec({**ckpt.config, "total_steps": summary["steps"] + 2 * batch})
    resumed = Recorder()
    again = Trainer(more, tmp_path / "b", resumed, resume=ckpt).run()
    assert again["status"] == "SUCCEEDED"
    assert [r["step"] for r in resumed.rows] == [summary["steps"] + batch, summary["steps"] + 2 * batch]
    assert resumed.rows[0]["weights_version"] == ckpt.state.weights.version + 1

    # `a2c evaluate` of the archive plays the same deterministic episodes as its policy here.
    done = subprocess.run([sys.executable, "-m", "api.cli", "evaluate", summary["checkpoint"],
                           "--episodes", "2", "--seed", "5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["env"] == "Hopper-v5" and line["episodes"] == 2
    here = evaluate_policy(ckpt.acting(), "Hopper-v5", {}, 2, seed=5)
    assert line["return_mean"] == pytest.approx(float(np.mean(here)))
