"""Atari jobs end to end: the spec (tuned family, torso checks, missing extras), a short Pong
run through the real trainer, its checkpoint and `a2c evaluate`, and uint8 frames all the way
to the learner through Ray's object store."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from service.run.spec import InvalidSpec, build_spec
from service.run.loop import Trainer, job_spaces, read_checkpoint

PONG = "PongNoFrameskip-v4"


def test_every_atari_id_gets_the_tuned_atari_entry_and_no_tuned_keeps_the_defaults():
    for env_id in (PONG, "ALE/Breakout-v5", "SpaceInvadersNoFrameskip-v4"):
        spec = build_spec({"env": env_id})
        assert spec.workers * spec.envs_per_worker == 16 and spec.steps_per_env == 5
        assert (spec.mode, spec.workers, spec.cnn_precision) == ("async", 1, "auto")
        assert spec.a2c.optimizer == "rmsprop_tf" and spec.a2c.optimizer_eps == 1e-5
        assert (spec.a2c.entropy_coef, spec.a2c.value_coef, spec.a2c.gae_lambda) == (0.01, 0.25, 1.0)
        assert spec.a2c.learning_rate_schedule == "constant" and spec.a2c.learning_rate == 7e-4
        assert spec.a2c.mini_batch_size is None
        assert "a2c.optimizer" in spec.tuned
    plain = build_spec({"env": PONG, "use_tuned": False})
    assert plain.tuned == () and plain.a2c.optimizer == "adam" and plain.a2c.steps_per_batch == 2048


def test_an_mlp_torso_on_atari_frames_is_refused_naming_the_field():
    with pytest.raises(InvalidSpec) as exc:
        job_spaces(build_spec({"env": PONG, "policy": {"torso": "mlp"}}))
    assert exc.value.field == "policy.torso" and "nature_cnn" in exc.value.message
    assert job_spaces(build_spec({"env": PONG})).obs_dtype == "uint8"
    with pytest.raises(InvalidSpec) as exc:
        job_spaces(build_spec({"env": PONG, "env_kwargs": {"frameskip": 2}}))
    assert exc.value.field == "env_kwargs" and "frameskip" in exc.value.message


def test_bfloat16_cnn_precision_is_for_image_policies_only():
    assert job_spaces(build_spec({"env": PONG, "cnn_precision": "bfloat16"})).is_image
    cartpole = build_spec({"env": "CartPole-v1"})
    assert cartpole.cnn_precision == "auto" and not job_spaces(cartpole).is_image  # auto: float32 for MLPs
    with pytest.raises(InvalidSpec) as exc:
        job_spaces(build_spec({"env": "CartPole-v1", "cnn_precision": "bfloat16"}))
    assert exc.value.field == "cnn_precision" and "use float32" in exc.value.message


@pytest.mark.parametrize("module, env_id, extra", [("ale_py", "ALE/Pong-v5", "atari"),
                                                    ("mujoco", "HalfCheetah-v5", "mujoco")])
def test_an_env_whose_extra_is_missing_fails_before_ray_with_the_pip_command(tmp_path, module, env_id, extra):
    # The package is made unimportable in a fresh interpreter, as on a machine without it.
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from api.cli import main\n"
            f"sys.exit(main(['train', '--env', {env_id!r}, '--out', {str(tmp_path / 'run')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "invalid job spec: env" in result.stderr
    assert f"pip install 'a2c-service[{extra}]'" in result.stderr
    assert "[ray]" not in result.stderr


class Rows:
    """A sink that keeps the metrics rows and checkpoints."""

    def __init__(self):
        self.rows, self.checkpoints, self.events = [], [], []

    def event(self, kind, message):
        self.events.append((kind, message))

    def metrics(self, row):
        self.rows.append(row)

    def checkpoint(self, info):
        self.checkpoints.append(info)

    def rewind(self, step):
        pass


@pytest.mark.ray
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_short_pong_run_checkpoints_a_cnn_policy_that_a2c_evaluate_plays(ray_session, tmp_path, capsys, precision):
    # Games cut at 200 frames (50 agent steps), so that each env ends one in its 60 steps.
    spec = build_spec({"env": PONG, "total_steps": 960, "eval_episodes": 2, "cnn_precision": precision,
                       "env_kwargs": {"max_num_frames_per_episode": 200}})
    sink = Rows()
    summary = Trainer(spec, tmp_path, sink).run()
    assert summary["status"] == "SUCCEEDED" and summary["steps"] == 960
    devices = [message for kind, message in sink.events if kind == "device"]
    assert devices and ("convolutions in bfloat16" in devices[0]) == (precision == "bfloat16"), devices
    (placement,) = [message for kind, message in sink.events if kind == "placement"]
    assert placement.endswith(f"; workers' convolutions in {precision}"), placement  # as the learner's
    assert sum(r["episodes"] for r in sink.rows) >= 16 and "eval_return_mean" in sink.rows[-1]
    checkpoint = read_checkpoint(summary["checkpoint"])
    assert checkpoint.spaces.obs_shape == (4, 84, 84) and checkpoint.spaces.obs_dtype == "uint8"
    assert checkpoint.state.weights.tensors["torso.0.weight"].shape == (32, 4, 8, 8)
    assert checkpoint.config["a2c"]["optimizer"] == "rmsprop_tf"
    from api.cli import main
    assert main(["evaluate", summary["checkpoint"], "--episodes", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["env"] == PONG and line["episodes"] == 2 and np.isfinite(line["return_mean"])
    # A longer job may resume from it: the spaces and the CNN's weights fit.
    resumed = build_spec({**checkpoint.config, "total_steps": 1920})
    assert job_spaces(resumed, checkpoint) == checkpoint.spaces


def test_a2c_envs_lists_atari_ids_with_their_sticky_actions(capsys):
    from api.cli import main
    assert main(["envs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "ALE/Pong-v5  (Atari: DeepMind preprocessing, sticky actions p=0.25)" in lines
    assert "PongNoFrameskip-v4  (Atari: DeepMind preprocessing, sticky actions p=0)" in lines
    assert "CartPole-v1" in lines


@pytest.mark.ray
def test_frames_reach_the_learner_as_uint8_through_the_object_store(ray_session):
    import ray

    from learner.learner import Learner
    from workers.worker import RolloutWorker
    spec = build_spec({"env": PONG})
    spaces = job_spaces(spec)
    worker = ray.remote(RolloutWorker).remote(PONG, {}, 4, 5, spaces, spec.policy, 0, 0)
    learner = ray.remote(Learner).remote(spaces, spec.policy, spec.a2c, 1000, 0)
    try:
        rollout, _ = worker.sample.options(num_returns=2).remote(learner.weights.remote())

        def learner_input(self, rollout):
            host, device = self._batch((rollout,))
            return str(rollout.obs.dtype), rollout.obs.nbytes, str(host["obs"].dtype), str(device["obs"].dtype)

        arrived, nbytes, host, device = ray.get(learner.__ray_call__.remote(learner_input, rollout))
        assert (arrived, host, device) == ("uint8", "uint8", "torch.uint8")
        assert nbytes == 5 * 4 * 4 * 84 * 84  # one byte a pixel: T x N x 4 frames of 84x84
        stats = ray.get(learner.update.remote(rollout))
        assert not stats["skipped"]
    finally:
        ray.kill(worker)
        ray.kill(learner)


def test_placement_names_workers_that_act_in_another_precision_than_the_learner():
    """cnn_precision auto is resolved on each node: a worker on a CPU without bfloat16 units acts in
    float32 while a learner with them trains in bfloat16, and the placement event says so."""
    from types import SimpleNamespace
    trainer = SimpleNamespace(learner_node="a" * 40, learner_precision="bfloat16")
    same = Trainer._placement(trainer, [("b" * 40, "bfloat16"), ("c" * 40, "bfloat16")])
    assert same == f"learner on node {'a' * 12}; workers on nodes {'b' * 12}, {'c' * 12}; workers' convolutions in bfloat16"
    mixed = Trainer._placement(trainer, [("b" * 40, "bfloat16"), ("c" * 40, "float32")])
    assert mixed.endswith("; workers' convolutions in bfloat16 and float32, the learner's in bfloat16: workers act "
                          "with another function than the one trained (set cnn_precision to float32 or bfloat16 "
                          "to have one)"), mixed
    mlp = Trainer._placement(SimpleNamespace(learner_node="a" * 40, learner_precision=None), [("b" * 40, None)])
    assert mlp == f"learner on node {'a' * 12}; workers on nodes {'b' * 12}"
