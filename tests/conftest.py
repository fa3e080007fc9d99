"""Shared fixtures: one embedded Ray session for every test that needs Ray."""

from __future__ import annotations

import os

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
