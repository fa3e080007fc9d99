"""The checkpoint archive format: one .tar.gz of manifest, config, safetensors weights, optimizer.

Reading never unpickles and never extracts to disk: the tar is streamed once, each member's
header is checked (regular file, known name, no duplicate, size cap) before its bytes are read
into memory, the decompressed stream as a whole is capped (gzip bombs), and then the manifest's
sha256 of each file is compared. `read_archive` reads everything (to resume training);
`read_policy` reads only what a policy is rebuilt from (to act, to export), never the
optimizer state.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from learner.acting import NumpyPolicy, TorchActing, acting_policy
from learner.config import A2CConfig, PolicyConfig
from learner.rollout import LearnerState, Weights
from learner.spaces import SpacesSpec

if TYPE_CHECKING:
    from learner.policy import ActorCritic

ALGO = "A2C"
FORMAT_VERSION = 1
MEMBERS = ("manifest.json", "config.json", "policy.safetensors", "optimizer.pt")
MAX_MEMBER_BYTES = {"manifest.json": 1 << 20, "config.json": 1 << 20,
                    "policy.safetensors": 1 << 30, "optimizer.pt": 2 << 30}
"""Largest size each member may have; the weights and Adam's two moments dominate."""
MAX_ARCHIVE_BYTES = sum(MAX_MEMBER_BYTES.values()) + (1 << 20)
"""Largest decompressed tar stream read (members plus headers and padding)."""
POLICY_MEMBERS = MEMBERS[:3]
"""What `read_policy` reads: the manifest, the config and the weights; the archive writes them
before the optimizer state, which is then neither decompressed nor loaded."""


class CheckpointRejected(ValueError):
    """The archive is not a valid, untampered A2C checkpoint of a format this code reads."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: its manifest, the job config it was trained with, learner state."""

    manifest: dict[str, Any]
    config: dict[str, Any]
    """The job config it was trained with. Its `a2c` and `policy` sections are complete: a
    field that the writing version did not have takes its default (what that run used), so a
    resumed job never gets values from elsewhere (such as the tuned table) for them."""
    spaces: SpacesSpec
    state: LearnerState

    @property
    def env_id(self) -> str:
        """The env the policy was trained on."""
        return self.manifest["env"]

    def policy(self) -> ActorCritic:
        """The trained policy on CPU, rebuilt from the manifest's spaces and the config."""
        return _rebuild(self.spaces, self.config, self.state.weights.tensors)

    def acting(self, seed: int = 0) -> NumpyPolicy | TorchActing:
        """The trained policy as rollout workers act with it (`learner.acting.acting_policy`), in
        float32, drawing from `seed` when it samples: what `a2c evaluate` plays, so that its
        deterministic returns are those of the run's own evaluations (up to bfloat16's rounding
        for a job whose workers act in bfloat16)."""
        acting = acting_policy(self.spaces, PolicyConfig(**self.config.get("policy", {})), seed)
        acting.load_weights(self.state.weights.tensors)
        return acting


@dataclass(frozen=True)
class PolicyCheckpoint:
    """What `read_policy` reads of a checkpoint: its manifest, config, spaces and the policy's
    weights, without the optimizer state or the learner's counters."""

    manifest: dict[str, Any]
    config: dict[str, Any]
    spaces: SpacesSpec
    tensors: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Bytes of the policy's parameters and buffers (its state dict)."""
        return sum(t.nbytes for t in self.tensors.values())

    def policy(self) -> ActorCritic:
        """The trained policy on CPU, as `Checkpoint.policy`."""
        return _rebuild(self.spaces, self.config, self.tensors)


def _rebuild(spaces: SpacesSpec, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> ActorCritic:
    """The policy of `config`'s policy section for `spaces`, with these weights, in eval mode."""
    from learner.policy import ActorCritic, load_numpy_state  # torch: only where a policy is rebuilt

    policy = ActorCritic(spaces, PolicyConfig(**config.get("policy", {})))
    load_numpy_state(policy, tensors)
    return policy.eval()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_bytes(state: LearnerState, spaces: SpacesSpec, env_id: str, config: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> bytes:
    """The .tar.gz bytes of a checkpoint; `extra` adds manifest fields (e.g. return_mean)."""
    files = {
        "config.json": json.dumps(config, indent=2, sort_keys=True).encode(),
        "policy.safetensors": save_safetensors(state.weights.tensors),
        "optimizer.pt": state.optimizer,
    }
    manifest = {
        "algo": ALGO, "format_version": FORMAT_VERSION, "created": time.time(),
        "step": state.step, "updates": state.updates, "weights_version": state.weights.version,
        "env": env_id, "spaces": spaces.model_dump(mode="json"),
        "reward_norm": list(state.reward_norm) if state.reward_norm is not None else None,
        "sha256": {name: _sha256(data) for name, data in files.items()},
        **(extra or {}),
    }
    files = {"manifest.json": json.dumps(manifest, indent=2).encode(), **files}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(manifest["created"]), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _CappedReader(io.RawIOBase):
    """A read-only stream that refuses to yield more than `cap` bytes: the gzip-bomb guard.

    tarfile reads the whole stream sequentially (extended headers included, into memory), so
    the cap has to sit under it, on the decompressed bytes, not on the members it reports.
    """

    def __init__(self, raw: io.BufferedIOBase, cap: int) -> None:
        self.raw, self.cap, self.total = raw, cap, 0

    def readable(self) -> bool:
        """Always: this is a reader."""
        return True

    def readinto(self, buffer) -> int:
        """Fill `buffer` from the wrapped stream, counting against the cap."""
        want = min(len(buffer), self.cap - self.total + 1)
        data = self.raw.read(want)
        self.total += len(data)
        if self.total > self.cap:
            raise CheckpointRejected(f"archive decompresses to over {self.cap} bytes (the cap); "
                                     "refusing it as a possible gzip bomb")
        buffer[:len(data)] = data
        return len(data)


def _read_members(data: bytes, wanted: tuple[str, ...] = MEMBERS) -> dict[str, bytes]:
    """The archive's members by name, refusing anything but the expected regular files.

    Streams through the tar once: each header is checked (regular file, known name, no
    duplicate, size under its cap) before its bytes are read, so a member that declares
    gigabytes is refused without decompressing it. Only `wanted` members are read (others are
    skipped); stops once every one of them is, so members after them are not looked at.
    """
    stream = _CappedReader(gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"), MAX_ARCHIVE_BYTES)
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
            seen: set[str] = set()
            for m in tar:
                _check_member(m, seen)
                seen.add(m.name)
                if m.name not in wanted:
                    continue
                f = tar.extractfile(m)
                out[m.name] = f.read() if f is not None else b""
                if len(out[m.name]) != m.size:
                    raise CheckpointRejected(f"member {m.name!r} is truncated")
                if all(name in out for name in wanted) and wanted != MEMBERS:
                    break
    except CheckpointRejected:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise CheckpointRejected(f"not a readable .tar.gz archive: {type(exc).__name__}: {exc}") from None
    missing = [name for name in wanted if name not in out]
    if missing:
        raise CheckpointRejected(f"missing member(s): {', '.join(missing)}")
    return out


def _check_member(m: tarfile.TarInfo, seen: set[str]) -> None:
    """Refuse a member that is not one of MEMBERS as a plain file under its size cap."""
    if m.name.startswith("/") or Path(m.name).is_absolute():
        raise CheckpointRejected(f"unsafe member {m.name!r}: absolute path")
    if ".." in Path(m.name).parts:
        raise CheckpointRejected(f"unsafe member {m.name!r}: '..' in path")
    if m.issym() or m.islnk():
        raise CheckpointRejected(f"unsafe member {m.name!r}: links are not allowed")
    if not m.isfile():
        raise CheckpointRejected(f"unsafe member {m.name!r}: not a regular file")
    if m.name not in MEMBERS:
        raise CheckpointRejected(f"unexpected member {m.name!r}; expected only {', '.join(MEMBERS)}")
    if m.name in seen:
        raise CheckpointRejected(f"duplicate member {m.name!r}")
    cap = MAX_MEMBER_BYTES[m.name]
    if m.size > cap:
        raise CheckpointRejected(f"member {m.name!r} declares {m.size} bytes, over its cap of {cap}")


def _read_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_ARCHIVE_BYTES; a FIFO or device is refused
    before any read (O_NONBLOCK: opening a FIFO must not wait for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointRejected(f"{path} is not a regular file")
        if info.st_size > MAX_ARCHIVE_BYTES:
            raise CheckpointRejected(f"{path} is {info.st_size} bytes, over the cap of {MAX_ARCHIVE_BYTES}")
        return f.read(MAX_ARCHIVE_BYTES + 1)


def read_manifest(source: Path | str | bytes) -> dict[str, Any]:
    """Only the manifest of an archive (a path or its bytes), for choosing among archives: the
    members before it are checked as `read_archive` checks them, nothing after it is read,
    and nothing is verified against it (load the chosen archive with `read_archive`)."""
    data = source if isinstance(source, bytes) else _read_file(Path(source))
    try:
        manifest = json.loads(_read_members(data, ("manifest.json",))["manifest.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointRejected(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("algo") != ALGO:
        raise CheckpointRejected(f"not an {ALGO} checkpoint manifest")
    return manifest


def _manifest_and_config(files: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and the config (its `a2c` and `policy` sections completed with defaults),
    once the manifest names this algo and format and its sha256 of every other member read
    matches."""
    try:
        manifest = json.loads(files["manifest.json"])
        config = json.loads(files["config.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointRejected(f"manifest or config is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(config, dict):
        raise CheckpointRejected("manifest.json and config.json must be JSON objects")
    for section, model in (("a2c", A2CConfig), ("policy", PolicyConfig)):
        given = config.get(section, {})
        if not isinstance(given, dict):
            raise CheckpointRejected(f"config.json {section} must be a JSON object")
        config[section] = {**model().model_dump(mode="json"), **given}
    if manifest.get("algo") != ALGO:
        raise CheckpointRejected(f"manifest algo is {manifest.get('algo')!r}, expected {ALGO!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointRejected(
            f"unknown format_version {manifest.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    sums = manifest.get("sha256")
    if not isinstance(sums, dict):
        raise CheckpointRejected("manifest has no sha256 table of its files")
    for name in MEMBERS[1:]:
        if name in files and sums.get(name) != _sha256(files[name]):
            raise CheckpointRejected(f"checksum mismatch for {name}: the archive was modified or corrupted")
    return manifest, config


def _policy_weights(manifest: dict[str, Any], files: dict[str, bytes]) -> tuple[SpacesSpec, dict[str, np.ndarray]]:
    """The manifest's spaces and the policy's weights, refused when a weight is not finite or a
    normalisation statistic is out of range. Other errors propagate (the callers report them
    as contents that do not load)."""
    spaces = SpacesSpec(**manifest["spaces"])
    tensors = load_safetensors(files["policy.safetensors"])
    bad = sorted(name for name, t in tensors.items() if not np.isfinite(t).all())
    if bad:
        raise CheckpointRejected(f"policy weights {', '.join(bad)} contain NaN/inf")
    bad = sorted(name for name, t in tensors.items()
                 if (name.endswith(".var") and (t < 0).any()) or (name.endswith(".count") and (t <= 0).any()))
    if bad:
        raise CheckpointRejected(f"normalisation statistics {', '.join(bad)} are out of range "
                                 "(a variance below 0 or a count not above 0)")
    return spaces, tensors


@contextmanager
def _contents_load() -> Iterator[None]:
    """Any failure inside (but a CheckpointRejected, which passes) becomes CheckpointRejected:
    contents that do not rebuild mean the archive is unusable."""
    try:
        yield
    except CheckpointRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild means the archive is unusable
        raise CheckpointRejected(f"checkpoint contents do not load: {type(exc).__name__}: {exc}") from None


def read_policy(source: Path | str | bytes) -> PolicyCheckpoint:
    """Read and verify only a checkpoint's policy (a path or the archive's bytes): the
    manifest, the config and the safetensors weights, checked as `read_archive` checks them.
    The optimizer state (and any member after the weights) is neither decompressed nor
    loaded: serving and export need the policy alone.

    Raises CheckpointRejected naming the reason, as `read_archive` does.
    """
    data = source if isinstance(source, bytes) else _read_file(Path(source))
    files = _read_members(data, POLICY_MEMBERS)
    manifest, config = _manifest_and_config(files)
    with _contents_load():
        spaces, tensors = _policy_weights(manifest, files)
        read = PolicyCheckpoint(manifest, config, spaces, tensors)
        read.policy()  # the weights must fit the network the manifest describes
    return read


def read_archive(source: Path | str | bytes) -> Checkpoint:
    """Read and verify a checkpoint archive (a path or its bytes).

    Raises CheckpointRejected naming the reason: unsafe, unexpected, duplicate or oversized
    member, a stream over the size cap, wrong algo, unknown format version, checksum mismatch,
    non-finite weights, or contents that do not load (weights that do not fit the manifest,
    an optimizer state that would need unpickling of code).
    """
    import torch  # here, not at import: listing a run's archives reads manifests only

    data = source if isinstance(source, bytes) else _read_file(Path(source))
    files = _read_members(data)
    manifest, config = _manifest_and_config(files)
    with _contents_load():
        spaces, tensors = _policy_weights(manifest, files)
        # weights_only=True: a tampered optimizer.pt cannot run code while loading.
        torch.load(io.BytesIO(files["optimizer.pt"]), map_location="cpu", weights_only=True)
        reward_norm = manifest.get("reward_norm")
        if reward_norm is not None:
            reward_norm = tuple(float(v) for v in reward_norm)
            if (len(reward_norm) != 3 or not all(np.isfinite(reward_norm)) or reward_norm[1] < 0
                    or reward_norm[2] <= 0):
                raise CheckpointRejected(f"manifest reward_norm {manifest['reward_norm']!r} is not "
                                         "a finite (mean, var >= 0, count > 0)")
        state = LearnerState(Weights(int(manifest["weights_version"]), tensors), files["optimizer.pt"],
                             int(manifest["step"]), int(manifest["updates"]), reward_norm)
        checkpoint = Checkpoint(manifest, config, spaces, state)
        checkpoint.policy()  # the weights must fit the network the manifest describes
    return checkpoint
