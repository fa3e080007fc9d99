"""Shared fixtures: one embedded Ray session for every test that needs Ray, and the hostile
checkpoint archives that every archive loader must refuse."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """An embedded local Ray with 4 logical CPUs, started once for the whole test session."""
    import ray

    from service.cluster import connect
    connect(None, num_cpus=4)
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class Crafted:
    """A hostile checkpoint archive: its bytes, the reason a loader must give, and the file a
    pickle payload would create if it ever ran (it must not exist afterwards)."""

    name: str
    data: bytes
    reason: str
    marker: Path


class _Payload:
    """Unpickling this calls open(path, "w"): proof that code ran if the file appears."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _valid_archive_files() -> dict[str, bytes]:
    from learner.checkpoint import archive_bytes
    from learner.config import A2CConfig, PolicyConfig
    from learner.learner import Learner
    from learner.spaces import SpacesSpec

    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    config = {"env": "CartPole-v1", "total_steps": 4096, "workers": 1, "envs_per_worker": 2,
              "a2c": A2CConfig(steps_per_batch=256).model_dump(mode="json"),
              "policy": PolicyConfig().model_dump(mode="json")}
    learner = Learner(spaces, PolicyConfig(), A2CConfig(steps_per_batch=256), 4096, seed=0)
    data = archive_bytes(learner.state(), spaces, "CartPole-v1", config)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _tar_gz(files: dict[str, bytes], specials: tuple[tarfile.TarInfo, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in specials:
            tar.addfile(info)
    return buf.getvalue()


def _resigned(files: dict[str, bytes], **manifest_changes: Any) -> dict[str, bytes]:
    """The files with the manifest's checksums recomputed (what a careful attacker does)."""
    manifest = json.loads(files["manifest.json"])
    manifest["sha256"] = {k: hashlib.sha256(v).hexdigest() for k, v in files.items() if k != "manifest.json"}
    manifest.update(manifest_changes)
    return {**files, "manifest.json": json.dumps(manifest).encode()}


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _crafted_cases(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Every hostile archive a loader must refuse: name -> (bytes, reason it must name)."""
    import torch

    files = _valid_archive_files()
    without_weights = {k: v for k, v in files.items() if k != "policy.safetensors"}
    payload = io.BytesIO()
    torch.save({"state": {0: _Payload(marker)}, "param_groups": []}, payload)
    tampered = bytearray(files["policy.safetensors"])
    tampered[-1] ^= 0xFF
    bomb_header = tarfile.TarInfo("policy.safetensors")
    bomb_header.size = 8 << 30
    return {
        "dotdot": (_tar_gz({**files, "../evil.py": b"x"}), "'..' in path"),
        "absolute": (_tar_gz({**files, "/tmp/evil.py": b"x"}), "absolute path"),
        "symlink": (_tar_gz(without_weights, (_special("policy.safetensors", tarfile.SYMTYPE, "/etc/passwd"),)),
                    "links are not allowed"),
        "hardlink": (_tar_gz(without_weights, (_special("policy.safetensors", tarfile.LNKTYPE, "config.json"),)),
                     "links are not allowed"),
        "device": (_tar_gz(without_weights, (_special("policy.safetensors", tarfile.CHRTYPE),)),
                   "not a regular file"),
        "fifo": (_tar_gz(without_weights, (_special("policy.safetensors", tarfile.FIFOTYPE),)),
                 "not a regular file"),
        "pickle": (_tar_gz(_resigned({**files, "optimizer.pt": payload.getvalue()})), "do not load"),
        "checksum": (_tar_gz({**files, "policy.safetensors": bytes(tampered)}),
                     "checksum mismatch for policy.safetensors"),
        "gzip_bomb": (gzip.compress(bomb_header.tobuf(format=tarfile.PAX_FORMAT))
                      + gzip.compress(b"\0" * (16 << 20)) * 64, "over its cap"),
        "duplicate": (_tar_gz(files, (_special("config.json", tarfile.REGTYPE),)), "duplicate member"),
        "wrong_algo": (_tar_gz(_resigned(files, algo="PPO")), "manifest algo is 'PPO'"),
        "unknown_version": (_tar_gz(_resigned(files, format_version=99)), "unknown format_version 99"),
    }


CRAFTED = ("dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "pickle", "checksum",
           "gzip_bomb", "duplicate", "wrong_algo", "unknown_version")


@pytest.fixture(scope="session")
def _crafted_bytes(tmp_path_factory) -> tuple[Path, dict[str, tuple[bytes, str]]]:
    marker = tmp_path_factory.mktemp("payload") / "payload-ran"
    return marker, _crafted_cases(marker)


@pytest.fixture(params=CRAFTED)
def crafted(request, _crafted_bytes) -> Crafted:
    """Each hostile checkpoint archive in turn (tests using it run once per kind)."""
    marker, cases = _crafted_bytes
    data, reason = cases[request.param]
    return Crafted(request.param, data, reason, marker)


def _wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run (its `run-<id>.wandb` file: a 7-byte header, then
    LevelDB-log framed protobuf `Record`s in 32 KiB blocks). W&B's service process writes it
    after `finish` returns; its teardown waits until it is written."""
    import struct

    import wandb
    from wandb.proto import wandb_internal_pb2 as pb
    wandb.teardown()
    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture(scope="session")
def wandb_records():
    """A function: the records of the offline W&B run in a directory (W&B's `offline-run-*`)."""
    return _wandb_records
