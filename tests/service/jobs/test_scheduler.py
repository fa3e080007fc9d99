"""The admission policy: first come first served, backfill on idle CPUs, and a head job that
backfilled jobs never starve (they are preempted for it)."""

from __future__ import annotations

from service.jobs.scheduler import Queued, Running, plan


def started(decision) -> list[tuple[str, bool]]:
    return [(job.job_id, backfilled) for job, backfilled in decision.start]


def test_jobs_start_in_submission_order_while_they_fit():
    decision = plan([Queued("a", 2), Queued("b", 2), Queued("c", 2)], [], total_cpus=4, max_concurrent=4)
    assert started(decision) == [("a", False), ("b", False)]
    assert decision.preempt == [] and decision.fail == []


def test_a_small_job_backfills_the_cpus_a_big_head_job_cannot_use_yet():
    # The live case of issue 18d: 4 CPUs, A (1 worker) running, B (3 workers) waiting. C (1
    # worker) stayed PENDING with 2 CPUs free, and B never ran.
    decision = plan([Queued("b", 4), Queued("c", 2)], [Running("a", 2)], total_cpus=4, max_concurrent=4)
    assert started(decision) == [("c", True)]
    assert decision.preempt == []


def test_the_head_job_gets_its_cpus_back_from_backfilled_jobs_once_the_others_end():
    # A ended; C (backfilled) holds 2 of the 4 CPUs B needs: C is preempted, nothing else starts.
    decision = plan([Queued("b", 4), Queued("d", 2)], [Running("c", 2, backfilled=True)], 4, 4)
    assert decision.preempt == ["c"] and started(decision) == []
    # While C stops, nothing takes its CPUs or the free ones; once it has, B starts.
    assert plan([Queued("b", 4), Queued("d", 2)], [Running("c", 2, True, preempting=True)], 4, 4) == \
        plan([Queued("b", 4), Queued("d", 2)], [Running("c", 2, True, preempting=True)], 4, 4)
    assert started(plan([Queued("b", 4), Queued("d", 2)], [Running("c", 2, True, True)], 4, 4)) == []
    assert started(plan([Queued("b", 4), Queued("c", 2), Queued("d", 2)], [], 4, 4)) == [("b", False)]


def test_a_stream_of_small_jobs_cannot_starve_the_head_job():
    # Small jobs keep arriving and backfilling; each time the jobs that started before the head
    # end, the backfilled ones are preempted and the head starts.
    running = [Running("a", 2)]
    queue = [Queued("big", 4)] + [Queued(f"s{i}", 1) for i in range(20)]
    decision = plan(queue, running, 4, 8)
    assert started(decision) == [("s0", True), ("s1", True)]
    running = [Running("s0", 1, True), Running("s1", 1, True)]  # a ended
    decision = plan([Queued("big", 4)] + queue[3:], running, 4, 8)
    assert sorted(decision.preempt) == ["s0", "s1"] and started(decision) == []


def test_only_as_many_backfilled_jobs_as_needed_are_preempted_latest_first():
    running = [Running("a", 1, True), Running("b", 1, True), Running("c", 1, True)]
    decision = plan([Queued("head", 3)], running, total_cpus=4, max_concurrent=8)
    assert decision.preempt == ["c", "b"]


def test_cpus_beyond_the_heads_share_may_still_be_backfilled():
    running = [Running("a", 2), Running("bf", 2, backfilled=True)]  # 4 of 8 CPUs free
    decision = plan([Queued("head", 5), Queued("small", 1), Queued("other", 1)], running, 8, 8)
    assert decision.preempt == ["bf"]  # 6 coming: 5 held for the head, 1 left
    assert started(decision) == [("small", True)]


def test_the_concurrency_limit_holds_and_backfilled_jobs_give_their_slot_to_the_head():
    assert started(plan([Queued("b", 1)], [Running("a", 1)], total_cpus=8, max_concurrent=1)) == []
    decision = plan([Queued("b", 1)], [Running("a", 1, backfilled=True)], total_cpus=8, max_concurrent=1)
    assert decision.preempt == ["a"]


def test_a_job_bigger_than_the_cluster_fails_instead_of_blocking_the_queue():
    decision = plan([Queued("huge", 9), Queued("small", 2)], [], total_cpus=4, max_concurrent=4)
    assert decision.fail == [("huge", "it needs 9 CPUs (one per rollout worker and one for the learner) "
                                      "and the whole cluster has 4")]
    assert started(decision) == [("small", False)]


def test_nothing_starts_while_the_cluster_size_is_unknown():
    assert plan([Queued("a", 1)], [], total_cpus=None, max_concurrent=4).start == []
