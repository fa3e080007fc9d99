"""The admission policy: which queued jobs start now, and which backfilled jobs pause for the
job at the head of the queue.

A job needs one CPU per rollout worker and one for its learner, and starts only when they are
free, so jobs wait in PENDING instead of half-starting and starving each other; at most
`max_concurrent` jobs run at once. The policy is first-come first-served with backfill:

- Jobs start in submission order while they fit.
- The first queued job that does not fit is the *head*. Jobs behind it may still start on the
  CPUs that are free now (*backfill*), so CPUs do not sit idle behind a big job.
- The head is never starved: as soon as it would fit if the backfilled jobs gave their CPUs
  back, they are *preempted*: asked to stop after their current update, which writes a
  checkpoint, and requeued in their place; they resume from that checkpoint later, losing no
  training. Until the head has started, no new job backfills the CPUs it is owed (only what
  is left beyond them). So the head waits only for jobs that started before it did, never
  for jobs queued behind it.
- A job that needs more CPUs than the whole cluster has can never start: it is failed with the
  reason instead of blocking the queue.

The policy is a pure function of the queue and the running jobs (see `plan`); the manager
(`service.jobs.manager`) carries out its decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Queued:
    """A queued job as the policy sees it: its id and the CPUs it needs."""

    job_id: str
    cpus: int


@dataclass(frozen=True)
class Running:
    """A running job as the policy sees it, in the order the jobs started."""

    job_id: str
    cpus: int
    backfilled: bool = False
    """It started while a job ahead of it in the queue waited for CPUs."""
    preempting: bool = False
    """It was asked to stop for the head job and has not ended yet."""


@dataclass(frozen=True)
class Plan:
    """What to do now."""

    start: list[tuple[Queued, bool]] = field(default_factory=list)
    """Jobs to start, each with whether it starts as backfill."""
    preempt: list[str] = field(default_factory=list)
    """Running backfilled jobs to stop and requeue, so that the head job can start."""
    fail: list[tuple[str, str]] = field(default_factory=list)
    """Jobs that can never start on this cluster, with the reason."""


def plan(queue: Sequence[Queued], running: Sequence[Running], total_cpus: float | None,
         max_concurrent: int) -> Plan:
    """The decisions for `queue` (in submission order) given the `running` jobs (in start order)
    on a cluster of `total_cpus` (None while unknown: nothing starts)."""
    decision = Plan()
    if total_cpus is None:
        return decision
    free = total_cpus - sum(r.cpus for r in running)
    slots = max_concurrent - len(running)
    head: Queued | None = None
    for job in queue:
        if job.cpus > total_cpus:
            decision.fail.append((job.job_id, f"it needs {job.cpus} CPUs (one per rollout worker and one "
                                  f"for the learner) and the whole cluster has {total_cpus:g}"))
            continue
        fits = job.cpus <= free and slots >= 1
        if head is None and fits:
            decision.start.append((job, False))
        elif head is None:
            head = job
            left = _reclaim_for(job, free, slots, running, decision)
            if left is not None:  # CPUs are being freed for the head; only the rest can backfill
                free, slots = min(free, left[0]), min(slots, left[1])
            continue  # else the head waits for jobs that started before it; others may backfill
        elif fits:
            decision.start.append((job, True))
        else:
            continue
        free -= job.cpus
        slots -= 1
    return decision


def _reclaim_for(head: Queued, free: float, slots: int, running: Sequence[Running],
                 decision: Plan) -> tuple[float, int] | None:
    """If the head job can start once backfilled jobs give their CPUs back: add to `decision`
    the ones to preempt (the latest started first, as few as will do) and return the CPUs and
    slots left beyond the head's; else None."""
    coming = free + sum(r.cpus for r in running if r.preempting)
    slots += sum(1 for r in running if r.preempting)
    candidates = [r for r in reversed(running) if r.backfilled and not r.preempting]
    if coming + sum(r.cpus for r in candidates) < head.cpus or slots + len(candidates) < 1:
        return None
    for r in candidates:
        if coming >= head.cpus and slots >= 1:
            break
        decision.preempt.append(r.job_id)
        coming += r.cpus
        slots += 1
    return coming - head.cpus, slots - 1
