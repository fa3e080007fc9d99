"""Job spec validation at the edge: bad input names its field and the fix."""

import pytest

from service.run.spec import InvalidSpec, build_spec


def test_unknown_env_id_names_the_field():
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "NoSuchEnv-v0"})
    assert err.value.field == "env" and "not a registered gymnasium env" in err.value.message


def test_module_path_env_id_is_refused_without_import():
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "os:system"})
    assert err.value.field == "env" and "module path" in err.value.message


def test_bad_hyperparameter_names_the_nested_field():
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "CartPole-v1", "a2c": {"learning_rate": -1}})
    assert err.value.field == "a2c.learning_rate"


def test_unknown_field_is_an_error_not_ignored():
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "CartPole-v1", "a2c": {"learning_rat": 0.1}})
    assert err.value.field == "a2c.learning_rat"


def test_batch_that_does_not_divide_suggests_sizes():
    with pytest.raises(InvalidSpec, match=r"100 must be a multiple.*3 x 1 = 3.*use 99 or 102") as err:
        build_spec({"env": "CartPole-v1", "workers": 3, "envs_per_worker": 1,
                    "a2c": {"steps_per_batch": 100, "mini_batch_size": None}})
    assert err.value.field == "a2c.steps_per_batch" and "envs_per_worker" not in err.value.message.split(";")[1]


def test_more_workers_on_a_tuned_layout_are_told_the_envs_per_worker_that_fits():
    # Atari's tuned 16 envs are 1 worker x 16; `--workers 2` makes 32 envs, which 80 does not divide.
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "PongNoFrameskip-v4", "workers": 2})
    assert err.value.field == "a2c.steps_per_batch"
    assert err.value.message == ("80 must be a multiple of workers x envs_per_worker (2 x 16 = 32); use 64 or 96 "
                                 "(the value came from the tuned table; set it to override), or envs_per_worker 8 "
                                 "to keep the tuned table's 16 envs"), err.value.message
    assert build_spec({"env": "PongNoFrameskip-v4", "workers": 2, "envs_per_worker": 8}).steps_per_env == 5
    with pytest.raises(InvalidSpec) as err:  # 8 x 16 = 128 envs: more than the batch's 80
        build_spec({"env": "PongNoFrameskip-v4", "workers": 8})
    assert err.value.message.endswith("to a multiple of 128, or envs_per_worker 2 to keep the tuned table's 16 envs")


def test_batch_smaller_than_one_step_of_every_env_says_what_to_change():
    # 999 workers x 16 envs of tuned CartPole: the message read "use 15984 or 15984".
    with pytest.raises(InvalidSpec) as err:
        build_spec({"env": "CartPole-v1", "workers": 999})
    assert err.value.field == "a2c.steps_per_batch"
    message = err.value.message
    assert message.startswith("512 (the value came from the tuned table; set it to override) is less "
                              "than workers x envs_per_worker (999 x 16 = 15984)"), message
    assert "lower workers or envs_per_worker, or set steps_per_batch to a multiple of 15984" in message
    assert "15984 or 15984" not in message


def test_sizes_derive_in_one_place():
    spec = build_spec({"env": "Pendulum-v1", "workers": 2, "envs_per_worker": 4, "total_steps": 1000,
                       "a2c": {"steps_per_batch": 64}})
    assert spec.steps_per_env == 8 and spec.num_updates == 16


def test_tuned_values_fill_only_unset_fields_and_are_recorded(monkeypatch):
    from service.run import tuned
    monkeypatch.setitem(tuned.TUNED, "Acrobot-v1", {"a2c": {"learning_rate": 1e-3, "gamma": 0.9},
                                                  "policy": {"share_torso": False}})
    spec = build_spec({"env": "Acrobot-v1", "a2c": {"gamma": 0.95}})
    assert spec.a2c.learning_rate == 1e-3 and spec.a2c.gamma == 0.95
    assert spec.tuned == ("a2c.learning_rate", "policy.share_torso")
    assert spec.policy.share_torso is False
    assert "tuned" in spec.model_dump()
    plain = build_spec({"env": "Acrobot-v1", "use_tuned": False})
    assert plain.a2c.learning_rate == 3e-4 and plain.tuned == () and plain.policy.share_torso


def test_tuned_layout_fields_fill_only_when_unset(monkeypatch):
    from service.run import tuned
    monkeypatch.setitem(tuned.TUNED, "Acrobot-v1", {"envs_per_worker": 4, "a2c": {"steps_per_batch": 64}})
    spec = build_spec({"env": "Acrobot-v1", "workers": 2})
    assert spec.envs_per_worker == 4 and spec.steps_per_env == 8
    assert spec.tuned == ("a2c.steps_per_batch", "envs_per_worker") and spec.value_at("envs_per_worker") == 4
    mine = build_spec({"env": "Acrobot-v1", "workers": 2, "envs_per_worker": 8})
    assert mine.envs_per_worker == 8 and "envs_per_worker" not in mine.tuned


def test_gsde_on_a_discrete_env_names_the_field():
    from service.run.spec import job_spaces
    with pytest.raises(InvalidSpec) as exc:
        job_spaces(build_spec({"env": "CartPole-v1", "policy": {"use_sde": True}}))
    assert exc.value.field == "policy.use_sde" and "false" in str(exc.value)
    assert job_spaces(build_spec({"env": "Pendulum-v1", "policy": {"use_sde": True}})).action_type == "box"
