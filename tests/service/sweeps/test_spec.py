"""The sweep spec without a server: the space's checks, a trial's job spec, Tune's domains."""

from __future__ import annotations

import pytest

from service.run.spec import InvalidSpec, build_spec
from service.sweeps.spec import build_sweep, trial_config, trial_spec, tune_space

BASE = {"env": "CartPole-v1", "total_steps": 8192, "workers": 1, "envs_per_worker": 4,
        "a2c": {"steps_per_batch": 256}, "eval_every": 4}


def check(raw):
    return build_spec(raw, strict=True)


def sweep(**space):
    return build_sweep({"base": BASE, "space": space, "num_samples": 3}, check)


def test_trial_spec_sets_each_path_and_keeps_the_base():
    spec = trial_spec(BASE, {"a2c.learning_rate": 0.01, "envs_per_worker": 8, "policy.hidden_sizes": [32]})
    assert spec["a2c"] == {"steps_per_batch": 256, "learning_rate": 0.01}
    assert spec["envs_per_worker"] == 8 and spec["policy"] == {"hidden_sizes": [32]}
    assert BASE["a2c"] == {"steps_per_batch": 256}, "the base is not changed"


def test_ranges_sample_the_field_type_and_choices_their_values():
    from ray.tune.search.sample import Categorical, Float, Integer

    s = sweep(**{"a2c.learning_rate": {"loguniform": [1e-4, 1e-2]}, "envs_per_worker": {"uniform": [1, 8]},
                 "policy.hidden_sizes": {"choice": [[64, 64], [128]]}})
    space = tune_space(s)
    assert isinstance(space["a2c.learning_rate"], Float) and isinstance(space["envs_per_worker"], Integer)
    assert isinstance(space["policy.hidden_sizes"], Categorical)
    assert (space["envs_per_worker"].lower, space["envs_per_worker"].upper) == (1, 9), "both bounds included"
    config = trial_config(s, {"a2c.learning_rate": 0.003, "envs_per_worker": 2, "policy.hidden_sizes": 1})
    assert config == {"a2c.learning_rate": 0.003, "envs_per_worker": 2, "policy.hidden_sizes": [128]}
    check(trial_spec(s.base, config))


@pytest.mark.parametrize("space, field, words", [
    ({"a2c": {"choice": [1]}}, "space.a2c", "not a job spec field"),
    ({"env": {"choice": ["Acrobot-v1"]}}, "space.env", "one env"),
    ({"a2c.steps_per_batch": {"choice": [256, 250]}}, "space.a2c.steps_per_batch", "multiple of"),
    ({"a2c.gamma": {"uniform": [0.9, 1.5]}}, "space.a2c.gamma", "1.5"),
    ({"a2c.normalize_advantages": {"uniform": [0, 1]}}, "space.a2c.normalize_advantages.uniform", "not a number"),
])
def test_bad_spaces_name_their_path(space, field, words):
    with pytest.raises(InvalidSpec) as err:
        sweep(**space)
    assert err.value.field == field and words in err.value.message, err.value


def test_the_base_and_the_asha_rungs_are_checked():
    with pytest.raises(InvalidSpec) as err:
        build_sweep({"base": {**BASE, "workers": 0}, "space": {"seed": {"choice": [1, 2]}}}, check)
    assert err.value.field == "base.workers"
    with pytest.raises(InvalidSpec) as err:
        build_sweep({"base": BASE, "space": {"seed": {"choice": [1]}}, "asha": {"grace_steps": 8192}}, check)
    assert err.value.field == "asha.grace_steps"
    assert sweep(seed={"choice": [1, 2]}).grace_steps == 8192 // 16
