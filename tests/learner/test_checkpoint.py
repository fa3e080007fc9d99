"""Checkpoint archives: round trip, and refusal of tampered, foreign or unsafe archives."""

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from learner import checkpoint
from learner.checkpoint import MAX_MEMBER_BYTES, CheckpointRejected, archive_bytes, read_archive
from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.spaces import SpacesSpec

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
    path = tmp_path / "c.tar.gz"
    path.write_bytes(archive_bytes(learner.state(), SPACES, "CartPole-v1", CONFIG))
    ckpt = read_archive(path)
    obs = torch.randn(64, 4)
    restored = ckpt.policy()
    a1, lp1, v1 = learner.policy.act(obs, deterministic=True)
    a2, lp2, v2 = restored.act(obs, deterministic=True)
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2) and torch.equal(v1, v2)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(learner.policy.act(obs, generator=g1)[0], restored.act(obs, generator=g2)[0])
    assert ckpt.env_id == "CartPole-v1" and ckpt.manifest["algo"] == "A2C"


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


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.PAX_FORMAT)


@pytest.mark.parametrize("kind,reason", [
    (tarfile.LNKTYPE, "links are not allowed"),
    (tarfile.CHRTYPE, "not a regular file"),
    (tarfile.BLKTYPE, "not a regular file"),
    (tarfile.FIFOTYPE, "not a regular file"),
    (tarfile.DIRTYPE, "not a regular file"),
])
def test_hardlink_device_fifo_and_directory_members_are_refused(kind, reason):
    special = tarfile.TarInfo("policy.safetensors")
    special.type = kind
    if kind == tarfile.LNKTYPE:
        special.linkname = "config.json"
    files = {k: v for k, v in _members(_archive()).items() if k != "policy.safetensors"}
    with pytest.raises(CheckpointRejected, match=reason):
        read_archive(_pack(files, [special]))


def test_duplicate_member_is_refused():
    files = _members(_archive())
    second = tarfile.TarInfo("config.json")
    second.size = 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(second, io.BytesIO(b"{}"))
    with pytest.raises(CheckpointRejected, match="duplicate member 'config.json'"):
        read_archive(buf.getvalue())


def test_unexpected_member_name_is_refused():
    with pytest.raises(CheckpointRejected, match="unexpected member 'extra.py'"):
        read_archive(_pack({**_members(_archive()), "extra.py": b"print('hi')"}))


def test_member_declaring_gigabytes_is_refused_from_its_header_alone():
    # A real gzip bomb: 8 GiB of zeros behind a header that declares them, about 8 MB on disk.
    # The header is refused before any of those bytes are decompressed.
    info = tarfile.TarInfo("policy.safetensors")
    info.size = 8 << 30
    zeros = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    bomb = gzip.compress(_header(info)) + zeros * 128
    assert len(bomb) < 16 << 20
    with pytest.raises(CheckpointRejected, match="declares 8589934592 bytes, over its cap"):
        read_archive(bomb)


def test_oversized_config_is_refused():
    files = _members(_archive())
    files["config.json"] = b" " * (MAX_MEMBER_BYTES["config.json"] + 1)
    with pytest.raises(CheckpointRejected, match="'config.json' declares .* over its cap"):
        read_archive(_pack(files))


def test_decompressed_stream_over_the_cap_is_refused_however_it_hides(monkeypatch):
    # tarfile reads a PAX extended header into memory whole, whatever member follows; the cap
    # on decompressed bytes stops it. Lowered here so the test need not inflate gigabytes.
    monkeypatch.setattr(checkpoint, "MAX_ARCHIVE_BYTES", 4 << 20)
    info = tarfile.TarInfo("config.json")
    info.size = 2
    info.pax_headers = {"comment": "x" * (16 << 20)}
    bomb = gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT) + b"{}".ljust(512, b"\0") + b"\0" * 1024)
    with pytest.raises(CheckpointRejected, match="decompresses to over 4194304 bytes"):
        read_archive(bomb)


@pytest.mark.parametrize("member", ["config.json", "optimizer.pt"])
def test_checksum_mismatch_of_any_member_is_refused(member):
    files = _members(_archive())
    files[member] = files[member] + b" "
    with pytest.raises(CheckpointRejected, match=f"checksum mismatch for {member}"):
        read_archive(_pack(files))


def test_manifest_without_checksums_is_refused():
    files = _members(_archive())
    manifest = json.loads(files["manifest.json"])
    del manifest["sha256"]
    with pytest.raises(CheckpointRejected, match="no sha256 table"):
        read_archive(_pack({**files, "manifest.json": json.dumps(manifest).encode()}))


def test_nan_weights_are_refused_even_with_matching_checksums():
    files = _members(_archive())
    tensors = load_safetensors(files["policy.safetensors"])
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    files["policy.safetensors"] = save_safetensors(tensors)
    manifest = json.loads(files["manifest.json"])
    manifest["sha256"]["policy.safetensors"] = hashlib.sha256(files["policy.safetensors"]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(CheckpointRejected, match=f"policy weights {name}.* contain NaN/inf"):
        read_archive(_pack(files))


def test_truncated_archive_is_refused():
    data = _archive()
    with pytest.raises(CheckpointRejected, match="not a readable"):
        read_archive(data[: len(data) // 2])


def test_fifo_and_device_paths_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "ckpt.tar.gz"
    os.mkfifo(fifo)  # opening it for a plain read would wait forever for a writer
    with pytest.raises(CheckpointRejected, match="not a regular file"):
        read_archive(fifo)
    with pytest.raises(CheckpointRejected, match="not a regular file"):
        read_archive("/dev/zero")


def test_read_policy_gives_the_archives_policy_without_reading_the_optimizer():
    data = _archive()
    full, policy_only = read_archive(data), checkpoint.read_policy(data)
    assert policy_only.manifest == full.manifest and policy_only.config == full.config
    assert policy_only.spaces == full.spaces
    assert policy_only.tensors.keys() == full.state.weights.tensors.keys()
    assert policy_only.nbytes == sum(t.nbytes for t in full.state.weights.tensors.values())
    obs = torch.randn(16, 4)
    assert torch.equal(policy_only.policy().act(obs, deterministic=True)[0], full.policy().act(obs, deterministic=True)[0])
    # An optimizer state that is garbage (re-signed, so its checksum matches): read_archive
    # refuses it, read_policy never looks at it.
    files = _members(data)
    files["optimizer.pt"] = b"\x80garbage"
    manifest = json.loads(files["manifest.json"])
    manifest["sha256"]["optimizer.pt"] = hashlib.sha256(files["optimizer.pt"]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(CheckpointRejected, match="do not load"):
        read_archive(_pack(files))
    assert checkpoint.read_policy(_pack(files)).nbytes == policy_only.nbytes
