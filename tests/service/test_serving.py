"""service/serving.py without the app: the byte-bounded LRU cache of policies, the checks on a
batch of observations, the actions as evaluation computes them, and torch's one thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.policy import obs_tensor
from learner.spaces import SpacesSpec
from service.serving import (InvalidObservations, PolicyCache, PolicyServer, ServedPolicy, UnservableCheckpoint,
                             inference_torch, observation_batch, policy_actions)

CARTPOLE = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
PENDULUM = SpacesSpec(obs_shape=(3,), action_type="box", action_shape=(1,), action_low=(-2.0,), action_high=(2.0,))
IMAGES = SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete", action_n=6)


def archive(spaces: SpacesSpec, policy: PolicyConfig, env: str = "CartPole-v1", seed: int = 0) -> bytes:
    """A checkpoint archive of an untrained learner."""
    a2c = A2CConfig(steps_per_batch=256)
    learner = Learner(spaces, policy, a2c, 4096, seed=seed)
    config = {"env": env, "a2c": a2c.model_dump(mode="json"), "policy": policy.model_dump(mode="json")}
    return archive_bytes(learner.state(), spaces, env, config)


def entry(nbytes: int) -> ServedPolicy:
    return ServedPolicy(policy=None, nbytes=nbytes)  # the cache only counts bytes


# The cache

def test_cache_evicts_least_recently_used_to_stay_within_its_bytes():
    cache = PolicyCache(max_bytes=250)
    for key in "abc":
        cache.get(key, lambda: entry(100))
    assert cache.keys() == ["b", "c"] and cache.nbytes == 200
    cache.get("b", lambda: pytest.fail("b is cached"))  # a hit makes b the most recent
    cache.get("d", lambda: entry(100))
    assert cache.keys() == ["b", "d"] and cache.nbytes == 200 and cache.loads == 4
    cache.get("e", lambda: entry(250))  # exactly the bound: everything else goes
    assert cache.keys() == ["e"] and cache.nbytes == 250


def test_a_policy_over_the_bound_is_served_but_not_kept():
    cache = PolicyCache(max_bytes=100)
    cache.get("small", lambda: entry(60))
    assert cache.get("huge", lambda: entry(101)).nbytes == 101
    assert cache.keys() == ["small"] and cache.nbytes == 60
    cache.get("huge", lambda: entry(101))
    assert cache.loads == 3, "loaded again: it was not kept"


def test_zero_bytes_keeps_nothing():
    cache = PolicyCache(max_bytes=0)
    cache.get("a", lambda: entry(1))
    assert cache.keys() == [] and cache.nbytes == 0


def test_concurrent_misses_of_one_key_load_it_once():
    cache = PolicyCache(max_bytes=1000)
    calls = []

    def slow_load() -> ServedPolicy:
        calls.append(1)
        time.sleep(0.2)
        return entry(10)

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", slow_load))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)


def test_a_failed_load_is_not_cached_and_is_tried_again():
    cache = PolicyCache(max_bytes=1000)
    with pytest.raises(RuntimeError):
        cache.get("k", lambda: (_ for _ in ()).throw(RuntimeError("storage down")))
    assert cache.keys() == [] and cache.get("k", lambda: entry(5)).nbytes == 5


# Observation checks

def _error(observations, spaces=CARTPOLE, max_batch=8) -> InvalidObservations:
    with pytest.raises(InvalidObservations) as info:
        observation_batch(observations, spaces, max_batch)
    return info.value


def test_a_good_batch_becomes_float32_or_uint8_of_the_policy_shape():
    batch = observation_batch([[0.1, 2, -3, 4.5]] * 3, CARTPOLE, 8)
    assert batch.dtype == np.float32 and batch.shape == (3, 4)
    image = np.zeros((4, 84, 84), dtype=np.uint8).tolist()
    assert observation_batch([image], IMAGES, 8).dtype == np.uint8


@pytest.mark.parametrize("observations, where, message", [
    ([], (), "empty batch"),
    ([[0, 0, 0, 0]] * 9, (), "batch of 9 observations is over the limit of 8 (A2C_ACT_MAX_BATCH)"),
    ([[0, 0, 0]], (0,), "observations[0] has shape (3,), expected shape (4,)"),
    ([[0, 0, 0, 0], [0, 0, 0, 0, 0]], (1,), "observations[1] has shape (5,), expected shape (4,)"),
    ([0.1, 0.2, 0.3, 0.4], (0,), "wrap a single observation in a list"),
    ([[0, [1], 0, 0]], (0,), "a ragged nested list, expected shape (4,)"),
    ([[0, 0, "1.5", 0]], (0, 2), "observations[0][2] is a string ('1.5'); observations are JSON numbers"),
    ([[0, True, 0, 0]], (0, 1), "is a boolean"),
    ([[0, 0, 0, None]], (0, 3), "is null"),
    ([[0, 0, 0, {}]], (0, 3), "is an object"),
    ([[0, 0, 0, 0], [0, float("nan"), 0, 0]], (1, 1), "observations[1][1] is nan, not a finite float32"),
    ([[float("-inf"), 0, 0, 0]], (0, 0), "not a finite float32"),
    ([[0, 0, 1e39, 0]], (0, 2), "not a finite float32"),
    ([[0, 0, 10**400, 0]], (0, 2), "not a finite float32"),
])
def test_bad_observations_name_what_is_wrong_and_where(observations, where, message):
    error = _error(observations)
    assert error.where == where and message in str(error), str(error)


def test_an_image_policy_refuses_floats_and_values_outside_uint8():
    image = np.zeros((4, 84, 84), dtype=np.int64)
    floats = image.tolist()
    floats[1][2][3] = 3.0
    error = _error([floats], IMAGES)
    assert error.where == (0, 1, 2, 3) and "is 3.0, a float; this policy takes uint8" in str(error)
    image[3, 83, 83] = 256
    error = _error([image.tolist()], IMAGES)
    assert error.where == (0, 3, 83, 83) and "is 256, outside uint8's 0..255" in str(error)
    error = _error([np.zeros((84, 84, 4), dtype=np.int64).tolist()], IMAGES)
    assert error.where == (0,) and "has shape (84, 84, 4), expected shape (4, 84, 84)" in str(error)


# Actions

def test_actions_are_the_policys_deterministic_ones_with_normalisation_and_clipping():
    rng = np.random.default_rng(0)
    data = archive(PENDULUM, PolicyConfig(normalize_observations=True, log_std_init=0.0), "Pendulum-v1")
    policy = read_archive(data).policy()
    # Statistics far from (0, 1) and a large mean weight: normalisation matters, clipping too.
    policy.obs_norm.mean[:] = torch_tensor([0.5, -0.5, 3.0])
    policy.obs_norm.var[:] = torch_tensor([0.25, 4.0, 9.0])
    policy.action_head.weight.data *= 300
    obs = rng.normal(size=(64, 3)).astype(np.float32)
    out = policy_actions(policy, obs, deterministic=True)
    mean, _, value = policy.act(obs_tensor(obs, PENDULUM), deterministic=True)
    assert np.array_equal(np.asarray(out.actions, dtype=np.float32), policy.clip_action(mean.numpy()))
    assert np.asarray(out.actions).shape == (64, 1) and np.abs(out.actions).max() == 2.0
    assert np.allclose(out.values, value.numpy())
    unnormalised = policy.action_head(policy._mlp(policy.torso, torch_tensor(obs)))
    assert not np.allclose(mean.numpy(), unnormalised.detach().numpy()), "the statistics were applied"


def torch_tensor(values):
    import torch
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def test_sampled_actions_vary_and_stay_in_the_action_bounds():
    policy = read_archive(archive(PENDULUM, PolicyConfig(log_std_init=1.0), "Pendulum-v1")).policy()
    obs = np.zeros((256, 3), dtype=np.float32)
    actions = np.asarray(policy_actions(policy, obs, deterministic=False).actions)
    assert len(np.unique(actions)) > 10 and actions.min() >= -2.0 and actions.max() <= 2.0


def test_server_loads_only_the_policy_and_caches_by_checkpoint(tmp_path):
    path = tmp_path / "step-0000000256.tar.gz"
    path.write_bytes(archive(CARTPOLE, PolicyConfig()))
    server = PolicyServer(cache_bytes=1 << 20, max_batch=16)
    obs = [[0.01, 0.2, -0.03, 0.1]] * 2
    first = server.act(("job", "step-0000000256"), str(path), obs)
    assert server.act(("job", "step-0000000256"), str(path), obs) == first
    assert server.cache.loads == 1 and isinstance(first.actions[0], int)
    expected = read_archive(path).policy().act(obs_tensor(np.asarray(obs), CARTPOLE), deterministic=True)[0]
    assert first.actions == expected.tolist()


def test_an_archive_with_a_pickle_optimizer_is_served_without_running_it(_crafted_bytes, tmp_path):
    marker, cases = _crafted_bytes
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(cases["pickle"][0])
    with pytest.raises(Exception, match="do not load"):
        read_archive(path)  # the full read refuses it
    server = PolicyServer(cache_bytes=1 << 20, max_batch=16)
    assert len(server.act(("job", "step-0000000256"), str(path), [[0.0] * 4]).actions) == 1
    assert not marker.exists(), "the optimizer state was never unpickled"


@pytest.mark.parametrize("kind", ["checksum", "symlink", "gzip_bomb", "wrong_algo", "unknown_version"])
def test_an_archive_whose_policy_is_tampered_is_unservable_naming_the_reason(_crafted_bytes, tmp_path, kind):
    _, cases = _crafted_bytes
    data, reason = cases[kind]
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(data)
    server = PolicyServer(cache_bytes=1 << 20, max_batch=16)
    with pytest.raises(UnservableCheckpoint, match=reason):
        server.act(("job", "step-0000000256"), str(path), [[0.0] * 4])
    assert server.cache.keys() == []


def test_torch_runs_on_one_thread_in_request_threads():
    torch = inference_torch()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert torch.get_num_threads() == 1 and seen == [1]
