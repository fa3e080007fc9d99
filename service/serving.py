"""Serving a checkpoint's policy: a batch of observations in, the policy's actions out.

`PolicyServer` is what `POST /jobs/{id}/checkpoints/{ckpt}/act` calls. It keeps loaded
policies in a `PolicyCache`, least recently used out first, bounded by their parameter bytes.
A policy is loaded with `read_policy`: only the manifest, the config and the safetensors
weights of the archive are read, never the optimizer state, and nothing is unpickled. The
observations are checked against the policy's spaces (`observation_batch`) and go through
torch's policy (`obs_tensor`, `ActorCritic.act`, `clip_action`): the checkpoint's observation
normalisation and the uint8 image scaling happen inside the policy. (Evaluations and `a2c
evaluate` play MLP policies with their numpy twin, `learner.acting.NumpyPolicy`: the same
actions up to float32 rounding.)

torch runs single-threaded in the server (`inference_torch`, the one place that sets it): the
server shares its machine with training processes, and for these small networks one thread
per request, with the requests spread over the server's thread pool, costs little latency.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable

import numpy as np

from learner.checkpoint import CheckpointRejected
from learner.spaces import SpacesSpec

if TYPE_CHECKING:
    from learner.policy import ActorCritic

log = logging.getLogger(__name__)

FLOAT32_MAX = float(np.finfo(np.float32).max)


class InvalidObservations(ValueError):
    """A request's observations do not fit the policy. `where` is the path under
    `body.observations` of what is wrong: () for the batch, (i,) for observation i, (i, j, ...)
    for one value."""

    def __init__(self, message: str, where: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.where = where


class UnservableCheckpoint(ValueError):
    """The checkpoint's archive does not load as a policy (tampered or corrupted on storage)."""


@functools.cache
def inference_torch():
    """torch, set to one intra-op thread for the whole process (once: the first call does it).

    Every use of torch in the server goes through here first, so no request runs a policy on
    all cores while training processes share the machine.
    """
    import torch
    torch.set_num_threads(1)
    log.info("a2c-service: torch in the server runs on 1 thread (inference)")
    return torch


@dataclass(frozen=True)
class ServedPolicy:
    """A policy loaded for serving, with its size as the cache counts it."""

    policy: "ActorCritic"
    nbytes: int
    """Bytes of its parameters and buffers (the checkpoint's safetensors tensors)."""


class PolicyCache:
    """Loaded policies by key (job id, checkpoint id), at most `max_bytes` of parameters in all.

    `get` returns the cached policy or loads it; a new one evicts the least recently used
    until the total fits. A policy larger than `max_bytes` on its own is served but not kept.
    Concurrent misses of one key load it once: the others wait for that load.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, ServedPolicy] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self.nbytes = 0
        """Bytes of the policies held now; never above max_bytes."""
        self.loads = 0
        """Policies loaded so far (misses), for tests and monitoring."""

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _hit(self, key: Hashable) -> ServedPolicy | None:
        """The entry, marked most recently used; call with the lock held."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def get(self, key: Hashable, load: Callable[[], ServedPolicy]) -> ServedPolicy:
        """The policy of `key`, loaded with `load()` on a miss (its errors propagate)."""
        with self._lock:
            if (entry := self._hit(key)) is not None:
                return entry
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if (entry := self._hit(key)) is not None:
                    return entry
            try:
                entry = load()
                with self._lock:
                    self.loads += 1
                    self._insert(key, entry)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return entry

    def _insert(self, key: Hashable, entry: ServedPolicy) -> None:
        """Keep `entry`, evicting least recently used entries to fit; call with the lock held."""
        if entry.nbytes > self.max_bytes:
            log.warning("a2c-service: policy %s has %d parameter bytes, over the act cache's %d "
                        "(A2C_ACT_CACHE_MB): served without caching", key, entry.nbytes, self.max_bytes)
            return
        while self._entries and self.nbytes + entry.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
        self._entries[key] = entry
        self.nbytes += entry.nbytes


_JSON_KIND = {str: "a string", bool: "a boolean", type(None): "null", dict: "an object", list: "a list",
              float: "a float", int: "an integer"}


def _kind(value: Any) -> str:
    """How a JSON value is named in error messages."""
    return _JSON_KIND.get(type(value), type(value).__name__)


def _got_shape(obs: Any) -> str:
    """The shape of an observation as sent, for an error message."""
    if not isinstance(obs, list):
        return f"{_kind(obs)}, not a list"
    try:
        return f"shape {_nested_shape(obs)}"
    except ValueError:
        return "a ragged nested list"


def _nested_shape(value: Any) -> tuple[int, ...]:
    """The shape of nested lists (() for a non-list); ValueError when they are ragged."""
    if not isinstance(value, list):
        return ()
    inner = {_nested_shape(v) for v in value}
    if len(inner) > 1:
        raise ValueError("ragged")
    return (len(value), *(inner.pop() if inner else ()))


def _where(path: tuple[int, ...]) -> str:
    return "observations" + "".join(f"[{i}]" for i in path)


def _check_values(obs: Any, shape: tuple[int, ...], integers: bool, path: tuple[int, ...]) -> None:
    """Raise InvalidObservations unless `obs` is nested lists of `shape` holding JSON numbers
    (integers only, when `integers`)."""
    if type(obs) is not list or len(obs) != shape[0]:
        raise ValueError  # the caller reports the whole observation's shape
    if len(shape) > 1:
        for j, inner in enumerate(obs):
            _check_values(inner, shape[1:], integers, (*path, j))
        return
    allowed = {int} if integers else {int, float}
    if set(map(type, obs)) <= allowed:
        return
    j, bad = next((j, v) for j, v in enumerate(obs) if type(v) not in allowed)
    if type(bad) is list:
        raise ValueError  # nested deeper than the shape: the caller reports the shape
    if type(bad) is float:
        raise InvalidObservations(f"{_where((*path, j))} is {bad!r}, a float; this policy takes uint8 "
                                  "observations (images): send integers 0..255", (*path, j))
    raise InvalidObservations(f"{_where((*path, j))} is {_kind(bad)} ({bad!r:.40}); observations are "
                              "JSON numbers", (*path, j))


def observation_batch(observations: list[Any], spaces: SpacesSpec, max_batch: int) -> np.ndarray:
    """A request's observations as the (B, *obs_shape) array the policy takes: uint8 for uint8
    spaces (images), else float32.

    Raises InvalidObservations at the first problem: an empty batch or one over `max_batch`,
    an observation of the wrong shape (expected and got), a value that is not a number (or
    not an integer 0..255 for uint8), or one that is not finite in float32.
    """
    if not observations:
        raise InvalidObservations("empty batch: give at least one observation (the batch axis comes first)")
    if len(observations) > max_batch:
        raise InvalidObservations(f"batch of {len(observations)} observations is over the limit of {max_batch} "
                                  "(A2C_ACT_MAX_BATCH): send it in several requests")
    shape, integers = tuple(spaces.obs_shape), spaces.obs_dtype == "uint8"
    for i, obs in enumerate(observations):
        try:
            _check_values(obs, shape, integers, (i,))
        except InvalidObservations:
            raise
        except ValueError:
            hint = ("; observations is a batch: wrap a single observation in a list"
                    if i == 0 and not isinstance(obs, list) and len(shape) == 1 else "")
            raise InvalidObservations(f"{_where((i,))} has {_got_shape(obs)}, expected shape {shape} "
                                      f"(the policy's observation shape){hint}", (i,)) from None
    if integers:
        try:
            batch = np.array(observations, dtype=np.int64)
        except OverflowError:  # an integer beyond int64: compare as Python ints
            batch = np.array(observations, dtype=object)
        outside = (batch < 0) | (batch > 255)
        if outside.any():
            index = _first(outside)
            raise InvalidObservations(f"{_where(index)} is {_value_at(observations, index)!r:.40}, outside uint8's "
                                      "0..255", index)
        return batch.astype(np.uint8)
    try:
        batch = np.array(observations, dtype=np.float64)
        bad = ~np.isfinite(batch) | (np.abs(batch) > FLOAT32_MAX)
    except OverflowError:  # an integer beyond float64: compare as Python numbers
        batch = np.array(observations, dtype=object)
        bad = np.vectorize(lambda v: not abs(v) <= FLOAT32_MAX, otypes=[bool])(batch)
    if bad.any():
        index = _first(bad)
        raise InvalidObservations(f"{_where(index)} is {_value_at(observations, index)!r:.40}, not a finite "
                                  "float32; observations must be finite numbers", index)
    return batch.astype(np.float32)


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """The index of the first true entry of a (B, *obs_shape) mask."""
    return tuple(int(k) for k in np.argwhere(mask)[0])


def _value_at(observations: list[Any], index: tuple[int, ...]) -> Any:
    """The value as sent at `index` of the nested lists."""
    value: Any = observations
    for k in index:
        value = value[k]
    return value


@dataclass(frozen=True)
class Actions:
    """What the policy answers for a batch of B observations."""

    actions: list[Any]
    """(B,) ints for a Discrete action space; (B, *action_shape) floats (clipped to the action
    bounds, as the env gets them) for a Box."""
    values: list[float]
    """(B,) state values V(obs)."""


def policy_actions(policy: "ActorCritic", batch: np.ndarray, deterministic: bool) -> Actions:
    """The actions (and values) of `policy` for a (B, *obs_shape) batch, as in evaluation:
    deterministic (argmax, or the Gaussian mean) or sampled; Box actions clipped to the bounds."""
    from learner.policy import obs_tensor
    torch = inference_torch()
    with torch.inference_mode():
        obs = obs_tensor(batch, policy.spaces)
        exploration = None if deterministic else policy.sample_exploration(len(batch))
        action, _, value = policy.act(obs, deterministic=deterministic, exploration=exploration)
    action_np, value_np = policy.clip_action(action.numpy()), value.numpy()
    finite = np.isfinite(value_np) & np.isfinite(action_np.reshape(len(batch), -1)).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InvalidObservations(f"{_where((i,))} drives the policy to a non-finite output: its values are "
                                  "far outside what it was trained on", (i,))
    return Actions(action_np.tolist(), value_np.astype(float).tolist())


class PolicyServer:
    """Checkpoints' policies served from a `PolicyCache` of `cache_bytes`, batches of at most
    `max_batch` observations."""

    def __init__(self, cache_bytes: int, max_batch: int) -> None:
        self.cache = PolicyCache(cache_bytes)
        self.max_batch = max_batch

    def policy(self, key: tuple[str, str], location: str) -> "ActorCritic":
        """The policy of checkpoint `key` = (job id, checkpoint id), whose archive is at `location`."""
        def load() -> ServedPolicy:
            from service.run.checkpoints import read_checkpoint_policy
            inference_torch()  # before torch builds the network
            try:
                read = read_checkpoint_policy(location)
            except CheckpointRejected as exc:
                raise UnservableCheckpoint(f"checkpoint {key[1]} of job {key[0]} cannot be served: {exc}") from None
            return ServedPolicy(read.policy(), read.nbytes)
        return self.cache.get(key, load).policy

    def act(self, key: tuple[str, str], location: str, observations: list[Any],
            deterministic: bool = True) -> Actions:
        """The actions of checkpoint `key` for a request's observations (see `observation_batch`
        for what is refused)."""
        policy = self.policy(key, location)
        return policy_actions(policy, observation_batch(observations, policy.spaces, self.max_batch), deterministic)

