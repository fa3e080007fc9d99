"""The admission policy: which queued jobs start now, given the cluster's CPUs and the
server's concurrency limit.

A job needs one CPU per rollout worker and one for its learner; it starts only when they are
free, so jobs wait in PENDING instead of half-starting and starving each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Queued:
    """A queued job as the policy sees it: its id and the CPUs it needs."""

    job_id: str
    cpus: int


def admit(queue: Sequence[Queued], running: int, reserved: float, total_cpus: float,
          max_concurrent: int) -> list[Queued]:
    """The queued jobs to start now, in queue order.

    `running` jobs hold `reserved` of the cluster's `total_cpus`; at most `max_concurrent` run
    at once. Jobs start in submission order; the head of the queue waits for its CPUs and the
    jobs behind it wait too.
    """
    started: list[Queued] = []
    for job in queue:
        if running + len(started) >= max_concurrent or reserved + job.cpus > total_cpus:
            break
        started.append(job)
        reserved += job.cpus
    return started
