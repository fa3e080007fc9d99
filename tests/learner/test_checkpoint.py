"""Checkpoint archives: round trip, and refusal of tampered, foreign or unsafe archives."""

import hashlib
import io
import json
import pickle
import tarfile

import pytest
import torch

from learner.checkpoint import CheckpointRejected, archive_bytes, read_archive, write_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.policy import SpacesSpec

SPACES = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
CONFIG = {"env": "CartPole-v1", "policy": PolicyConfig().model_dump(mode="json"),
          "a2c": A2CConfig().model_dump(mode="json")}


def _archive() -> bytes:
    learner = Learner(SPACES, PolicyConfig(), A2CConfig(), 1000, seed=3)
    return archive_bytes(learner.state(), SPACES, "CartPole-v1", CONFIG, {"return_mean": 1.0})


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _pack(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def _with_manifest(files, **changes):
    manifest = json.loads(files["manifest.json"])
    manifest.update(changes)
    return {**files, "manifest.json": json.dumps(manifest).encode()}


def test_round_trip_gives_identical_actions(tmp_path):
    learner = Learner(SPACES, PolicyConfig(), A2CConfig(), 1000, seed=3)
    path = write_archive(tmp_path / "c.tar.gz", learner.state(), SPACES, "CartPole-v1", CONFIG)
    ckpt = read_archive(path)
    obs = torch.randn(64, 4)
    restored = ckpt.policy()
    a1, lp1, v1 = learner.policy.act(obs, deterministic=True)
    a2, lp2, v2 = restored.act(obs, deterministic=True)
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2) and torch.equal(v1, v2)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(learner.policy.act(obs, generator=g1)[0], restored.act(obs, generator=g2)[0])
    assert ckpt.env_id == "CartPole-v1" and ckpt.manifest["algo"] == "A2C"
    assert not list(tmp_path.glob(".*tmp")), "no temporary file is left behind"


def test_resumed_learner_continues_optimizer_and_counters(tmp_path):
    learner = Learner(SPACES, PolicyConfig(), A2CConfig(), 1000, seed=3)
    state = read_archive(archive_bytes(learner.state(), SPACES, "CartPole-v1", CONFIG)).state
    resumed = Learner(SPACES, PolicyConfig(), A2CConfig(), 1000, seed=3, restore=state)
    assert resumed.step == learner.step and resumed.version == learner.version
    assert resumed.optimizer.state_dict()["param_groups"] == learner.optimizer.state_dict()["param_groups"]


def test_tampered_weights_are_refused():
    files = _members(_archive())
    weights = bytearray(files["policy.safetensors"])
    weights[-1] ^= 0xFF
    with pytest.raises(CheckpointRejected, match="checksum mismatch for policy.safetensors"):
        read_archive(_pack({**files, "policy.safetensors": bytes(weights)}))


def test_wrong_algo_is_refused():
    files = _with_manifest(_members(_archive()), algo="PPO")
    with pytest.raises(CheckpointRejected, match="manifest algo is 'PPO', expected 'A2C'"):
        read_archive(_pack(files))


def test_unknown_format_version_is_refused():
    with pytest.raises(CheckpointRejected, match="unknown format_version 99"):
        read_archive(_pack(_with_manifest(_members(_archive()), format_version=99)))


@pytest.mark.parametrize("name,reason", [("../evil", "'..'"), ("/etc/evil", "absolute path")])
def test_unsafe_member_paths_are_refused(name, reason):
    files = {**_members(_archive()), name: b"x"}
    with pytest.raises(CheckpointRejected, match=reason):
        read_archive(_pack(files))


def test_symlink_member_is_refused():
    link = tarfile.TarInfo("policy.safetensors")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    files = {k: v for k, v in _members(_archive()).items() if k != "policy.safetensors"}
    with pytest.raises(CheckpointRejected, match="links are not allowed"):
        read_archive(_pack(files, [link]))


def test_pickle_payload_in_optimizer_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = pickle.dumps({"state": Payload()})
    files = _members(_archive())
    files["optimizer.pt"] = evil
    manifest = json.loads(files["manifest.json"])
    manifest["sha256"]["optimizer.pt"] = hashlib.sha256(evil).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(CheckpointRejected, match="do not load"):
        read_archive(_pack(files))
    assert not marker.exists()


def test_garbage_is_refused():
    with pytest.raises(CheckpointRejected, match="not a readable"):
        read_archive(b"definitely not a tarball")
