"""Connecting to Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Make sure this process is a Ray driver; returns a description of the cluster it joined.

    With no address and no RAY_ADDRESS, start an embedded local Ray that dies with this
    process. `num_cpus` sets the embedded instance's logical CPUs (ignored for a cluster).
    Against a cluster started with `ray start` (token auth on by default since Ray 2.5x), the
    token in ~/.ray/auth_token is used when RAY_AUTH_MODE is unset.
    """
    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if "RAY_AUTH_MODE" not in os.environ and (
                os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists()):
            os.environ["RAY_AUTH_MODE"] = "token"
        ray.init(address=address, logging_level=logging.WARNING)
        return f"cluster at {address}"
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             configure_logging=False)
    return f"embedded local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def cluster_has_gpu() -> bool:
    """Whether any node of the cluster advertises a GPU."""
    return ray.cluster_resources().get("GPU", 0) >= 1
