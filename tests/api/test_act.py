"""POST /jobs/{id}/checkpoints/{ckpt}/act: a batch of observations in, the checkpoint's actions out.

Most tests run the app in-process without Ray (the store, queries and policy server injected
through `app.dependency_overrides`), over checkpoint archives made by a real Learner and
recorded in the store as a job's would be. One test asks the real server (`a2c serve`) for the
actions of a real CartPole job's checkpoints.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import Settings
from api.deps import get_manager, get_policies, get_queries, get_store
from learner.checkpoint import archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.policy import obs_tensor
from learner.spaces import SpacesSpec
from service.jobs.queries import JobQueries
from service.serving import PolicyServer
from service.store import CheckpointRow

SPEC = {"env": "CartPole-v1", "total_steps": 2048, "workers": 1, "envs_per_worker": 2,
        "a2c": {"steps_per_batch": 256}}
CARTPOLE = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
PENDULUM = SpacesSpec(obs_shape=(3,), action_type="box", action_shape=(1,), action_low=(-2.0,), action_high=(2.0,))
IMAGES = SpacesSpec(obs_shape=(4, 84, 84), obs_dtype="uint8", action_type="discrete", action_n=6)
TOKEN = "act-secret"


@pytest.fixture
def policies():
    return PolicyServer(cache_bytes=256 << 20, max_batch=1024)


def make_client(store, manager, policies, **settings) -> TestClient:
    """A client of an app whose lifespan does not run: no Ray, dependencies overridden."""
    app = create_app(Settings(**{"max_body_bytes": 4 << 20, **settings}))
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_manager] = lambda: manager
    app.dependency_overrides[get_queries] = lambda: JobQueries(store, manager.locations, manager.cluster_cpus)
    app.dependency_overrides[get_policies] = lambda: policies
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def inproc(store, manager, policies):
    """A client of the in-process app (named so as not to shadow the real server's `client`)."""
    return make_client(store, manager, policies)


def checkpointed_job(client, store, data_dir, spaces: SpacesSpec, policy: PolicyConfig, env: str = "CartPole-v1",
                     steps: tuple[int, ...] = (256,), seed: int = 0, eval_best: int | None = None) -> str:
    """A job (PENDING: never run) with a checkpoint archive of a fresh Learner at each of
    `steps`, recorded in the store as the trainer records them; `eval_best` gets the best
    evaluation return."""
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    a2c = A2CConfig(steps_per_batch=256)
    for i, step in enumerate(steps):
        learner = Learner(spaces, policy, a2c, 4096, seed=seed + i)
        config = {"env": env, "a2c": a2c.model_dump(mode="json"), "policy": policy.model_dump(mode="json")}
        data = archive_bytes(learner.state(), spaces, env, config)
        rel = f"jobs/{job_id}/checkpoints/step-{step:010d}.tar.gz"
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / rel).write_bytes(data)
        store.add_checkpoint(job_id, CheckpointRow(f"step-{step:010d}", step, None, len(data), 1.0, rel,
                                                   eval_return_mean=1.0 if step == eval_best else None))
    return job_id


def archive_policy(data_dir, job_id: str, step: int):
    return read_archive(data_dir / f"jobs/{job_id}/checkpoints/step-{step:010d}.tar.gz").policy()


def act(client, job_id: str, ckpt: str = "latest", **body):
    return client.post(f"/jobs/{job_id}/checkpoints/{ckpt}/act", json=body)


def assert_422_at(response, *loc) -> str:
    """A 422 whose first error points at body.observations + `loc`; returns its message."""
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "observations", *loc], error
    return error["msg"]


# Actions

def test_discrete_actions_are_the_checkpoints_deterministic_ones_for_latest_best_and_an_id(
        inproc, store, data_dir):
    job_id = checkpointed_job(inproc, store, data_dir, CARTPOLE, PolicyConfig(normalize_observations=True),
                              steps=(256, 512), eval_best=256)
    obs = (np.random.default_rng(0).normal(size=(64, 4)) * [1.0, 1.5, 0.15, 1.5]).astype(np.float32)
    for ckpt, step in (("latest", 512), ("best", 256), ("step-0000000256", 256), ("step-0000000512", 512)):
        policy = archive_policy(data_dir, job_id, step)
        action, _, value = policy.act(obs_tensor(obs, CARTPOLE), deterministic=True)
        r = act(inproc, job_id, ckpt, observations=obs.tolist(), include_values=True)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["job_id"] == job_id and body["checkpoint"] == f"step-{step:010d}"
        assert body["actions"] == action.tolist() and all(type(a) is int for a in body["actions"])
        assert np.allclose(body["values"], value.numpy(), atol=1e-6)
    assert "values" not in act(inproc, job_id, observations=obs[:1].tolist()).json()


def test_box_actions_are_the_clipped_gaussian_means_after_the_stored_normalisation(inproc, store, data_dir):
    job_id = checkpointed_job(inproc, store, data_dir, PENDULUM, PolicyConfig(normalize_observations=True),
                              env="Pendulum-v1")
    # Give the archive statistics far from (0, 1) and a large action head, re-signed, so that
    # both the normalisation and the clip to [-2, 2] change the answer.
    import torch
    path = data_dir / f"jobs/{job_id}/checkpoints/step-0000000256.tar.gz"
    ckpt = read_archive(path)
    tensors = dict(ckpt.state.weights.tensors)
    tensors["obs_norm.mean"] = np.array([0.5, -0.5, 3.0])
    tensors["obs_norm.var"] = np.array([0.25, 4.0, 9.0])
    tensors["action_head.weight"] = tensors["action_head.weight"] * 300
    from learner.rollout import LearnerState, Weights
    state = LearnerState(Weights(1, tensors), ckpt.state.optimizer, 256, 1)
    path.write_bytes(archive_bytes(state, PENDULUM, "Pendulum-v1", ckpt.config))
    policy = read_archive(path).policy()
    obs = np.random.default_rng(1).uniform(-1, 1, size=(64, 3)).astype(np.float32) * [1, 1, 8]
    mean, _, _ = policy.act(obs_tensor(obs, PENDULUM), deterministic=True)
    expected = policy.clip_action(mean.numpy())
    r = act(inproc, job_id, observations=obs.tolist())
    assert r.status_code == 200, r.text
    actions = np.asarray(r.json()["actions"], dtype=np.float32)
    assert actions.shape == (64, 1) and np.array_equal(actions, expected)
    assert -2.0 in actions and 2.0 in actions, "some means were clipped"
    raw = policy.action_head(policy._mlp(policy.torso, torch.as_tensor(obs, dtype=torch.float32)))
    assert not np.allclose(np.clip(raw.detach().numpy(), -2, 2), expected), "the statistics were applied"
    sampled = act(inproc, job_id, observations=[[0.0, 0.0, 0.0]] * 64, deterministic=False).json()["actions"]
    assert len({a[0] for a in sampled}) > 1 and all(-2.0 <= a[0] <= 2.0 for a in sampled)


def test_image_policy_takes_uint8_integers_and_scales_them(inproc, store, data_dir):
    job_id = checkpointed_job(inproc, store, data_dir, IMAGES, PolicyConfig(), env="PongNoFrameskip-v4")
    obs = np.random.default_rng(2).integers(0, 256, size=(2, 4, 84, 84), dtype=np.uint8)
    policy = archive_policy(data_dir, job_id, 256)
    r = act(inproc, job_id, observations=obs.tolist(), include_values=True)
    assert r.status_code == 200, r.text
    action, _, value = policy.act(obs_tensor(obs, IMAGES), deterministic=True)
    assert r.json()["actions"] == action.tolist()
    assert np.allclose(r.json()["values"], value.numpy(), atol=1e-5)
    floats = obs.tolist()
    floats[1][0][0][0] = 0.5
    msg = assert_422_at(act(inproc, job_id, observations=floats), 1, 0, 0, 0)
    assert "is 0.5, a float; this policy takes uint8 observations (images): send integers 0..255" in msg


# Bad input

@pytest.mark.parametrize("observations, loc, message", [
    ([], [], "empty batch"),
    ([[0.0, 0.0, 0.0]], [0], "observations[0] has shape (3,), expected shape (4,)"),
    ([[0.0] * 4, [0.0] * 5], [1], "observations[1] has shape (5,), expected shape (4,)"),
    ([0.0, 0.0, 0.0, 0.0], [0], "wrap a single observation in a list"),
    ([[0.0, "x", 0.0, 0.0]], [0, 1], "observations[0][1] is a string ('x'); observations are JSON numbers"),
    ([[0.0, 0.0, None, 0.0]], [0, 2], "is null"),
    ([[0.0, 0.0, 0.0, 1e39]], [0, 3], "not a finite float32"),
])
def test_bad_observations_are_422_pointing_into_body_observations(inproc, store, data_dir, observations, loc,
                                                                  message):
    job_id = checkpointed_job(inproc, store, data_dir, CARTPOLE, PolicyConfig())
    msg = assert_422_at(act(inproc, job_id, observations=observations), *loc)
    assert message in msg, msg


def test_non_finite_json_numbers_are_422(inproc, store, data_dir):
    job_id = checkpointed_job(inproc, store, data_dir, CARTPOLE, PolicyConfig())
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        r = inproc.post(f"/jobs/{job_id}/checkpoints/latest/act", content=f'{{"observations": [[0, 0, {token}, 0]]}}',
                        headers={"content-type": "application/json"})
        assert "not a finite float32" in assert_422_at(r, 0, 2), token


def test_a_batch_over_the_limit_is_422_naming_the_setting(store, manager, data_dir):
    client = make_client(store, manager, PolicyServer(cache_bytes=1 << 20, max_batch=8))
    job_id = checkpointed_job(client, store, data_dir, CARTPOLE, PolicyConfig())
    msg = assert_422_at(act(client, job_id, observations=[[0.0] * 4] * 9))
    assert "batch of 9 observations is over the limit of 8 (A2C_ACT_MAX_BATCH)" in msg
    assert act(client, job_id, observations=[[0.0] * 4] * 8).status_code == 200


def test_malformed_bodies_are_422_from_the_schema(inproc, store, data_dir):
    job_id = checkpointed_job(inproc, store, data_dir, CARTPOLE, PolicyConfig())
    for body, loc in (({}, ["body", "observations"]), ({"observations": "0,0,0,0"}, ["body", "observations"]),
                      ({"observations": [[0] * 4], "deterministic": "maybe"}, ["body", "deterministic"]),
                      ({"observations": [[0] * 4], "greedy": True}, ["body", "greedy"])):
        r = inproc.post(f"/jobs/{job_id}/checkpoints/latest/act", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text


def test_unknown_job_or_checkpoint_is_404_and_best_before_an_evaluation_too(inproc, store, data_dir):
    job_id = checkpointed_job(inproc, store, data_dir, CARTPOLE, PolicyConfig())
    body = {"observations": [[0.0] * 4]}
    assert inproc.post("/jobs/0123456789ab/checkpoints/latest/act", json=body).status_code == 404
    assert act(inproc, job_id, "step-0000000001", **body).status_code == 404
    r = act(inproc, job_id, "best", **body)
    assert r.status_code == 404 and "no evaluated checkpoint" in r.json()["detail"], r.text
    assert act(inproc, job_id, "..%2Fjobs.sqlite3", **body).status_code in (404, 422)


def test_a_tampered_archive_is_422_at_the_checkpoint_and_a_pickle_optimizer_never_runs(
        inproc, store, data_dir, _crafted_bytes):
    marker, cases = _crafted_bytes
    job_id = checkpointed_job(inproc, store, data_dir, CARTPOLE, PolicyConfig())
    path = data_dir / f"jobs/{job_id}/checkpoints/step-0000000256.tar.gz"
    path.write_bytes(cases["checksum"][0])
    r = act(inproc, job_id, observations=[[0.0] * 4])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "ckpt_id"], r.text
    assert "checksum mismatch for policy.safetensors" in r.json()["detail"][0]["msg"]
    path.write_bytes(cases["pickle"][0])  # its policy is sound; its optimizer.pt is a payload
    assert act(inproc, job_id, observations=[[0.0] * 4]).status_code == 200
    assert not marker.exists()


def test_every_act_needs_the_token_when_the_server_has_one(store, manager, policies, data_dir):
    client = make_client(store, manager, policies, api_token=TOKEN)
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    job_id = checkpointed_job(client, store, data_dir, CARTPOLE, PolicyConfig())
    body = {"observations": [[0.0] * 4]}
    assert act(client, job_id, **body).status_code == 200
    del client.headers["Authorization"]
    r = act(client, job_id, **body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    client.headers["Authorization"] = "Bearer wrong"
    assert act(client, job_id, observations=[]).status_code == 401, "auth comes before validation"


# The cache

def test_the_cache_keeps_its_byte_bound_evicting_the_least_recently_used(store, manager, data_dir):
    # [256, 256] torsos (a policy and a value one): about 0.55 MB of parameters each.
    policy = PolicyConfig(hidden_sizes=[256, 256])
    probe = make_client(store, manager, PolicyServer(1 << 30, 16))
    job_id = checkpointed_job(probe, store, data_dir, CARTPOLE, policy, steps=(256, 512, 768))
    size = read_archive(data_dir / f"jobs/{job_id}/checkpoints/step-0000000256.tar.gz").state.weights
    one = sum(t.nbytes for t in size.tensors.values())
    policies = PolicyServer(cache_bytes=2 * one + one // 2, max_batch=16)  # room for two
    client = make_client(store, manager, policies)
    body = {"observations": [[0.1, 0.0, -0.1, 0.0]]}
    key = (job_id,)
    for step in (256, 512, 768):
        assert act(client, job_id, f"step-{step:010d}", **body).status_code == 200
        assert policies.cache.nbytes <= policies.cache.max_bytes
    assert policies.cache.keys() == [(*key, "step-0000000512"), (*key, "step-0000000768")]
    assert policies.cache.nbytes == 2 * one and policies.cache.loads == 3
    act(client, job_id, "step-0000000512", **body)  # a hit: no load, now the most recent
    assert policies.cache.loads == 3
    act(client, job_id, "latest", **body)  # latest is step-768: a hit under its id, now the most recent
    assert policies.cache.loads == 3
    act(client, job_id, "step-0000000256", **body)  # evicted earlier: loaded again, evicts 512
    assert policies.cache.loads == 4 and policies.cache.nbytes == 2 * one
    assert policies.cache.keys() == [(*key, "step-0000000768"), (*key, "step-0000000256")]


def test_settings_give_the_cache_size_and_batch_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("A2C_ACT_CACHE_MB", "64")
    monkeypatch.setenv("A2C_ACT_MAX_BATCH", "32")
    settings = Settings()
    assert settings.act_cache_mb == 64 and settings.act_max_batch == 32
    assert Settings.model_fields["act_cache_mb"].default == 256
    assert Settings.model_fields["act_max_batch"].default == 1024


# The real server

def test_the_real_server_acts_as_a_finished_cartpole_jobs_checkpoints(client, finished_job):
    job_id = finished_job["id"]
    obs = (np.random.default_rng(0).normal(size=(64, 4)) * [1.0, 1.5, 0.15, 1.5]).astype(np.float32)
    for ckpt in ("best", "latest", "step-0000005120"):
        policy = read_archive(client.get(f"/jobs/{job_id}/checkpoints/{ckpt}/archive").content).policy()
        expected = policy.act(obs_tensor(obs, policy.spaces), deterministic=True)[0].tolist()
        r = client.post(f"/jobs/{job_id}/checkpoints/{ckpt}/act", json={"observations": obs.tolist()})
        assert r.status_code == 200, r.text
        assert r.json()["actions"] == expected
    r = client.post(f"/jobs/{job_id}/checkpoints/latest/act", json={"observations": [[0.0] * 3]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "observations", 0]

