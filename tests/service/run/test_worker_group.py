"""`loss_of` sorts real Ray failures: a lost actor (replace it) from a lost input (the producer's
fault) from the call's own exception (a bug: fail the job)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from service.run.worker_group import first_line, loss_of

pytestmark = pytest.mark.ray


def failure_of(ref, timeout=120):
    import ray
    with pytest.raises(Exception) as err:
        ray.get(ref, timeout=timeout)
    return err.value


@pytest.fixture
def actor_class(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self):
            return os.getpid()

        def slow(self, seconds):
            time.sleep(seconds)
            return 1

        def add(self, x):
            return x + 1

        def boom(self):
            raise ValueError("bad env")

    return Probe


def test_an_actor_killed_mid_call_is_died(ray_session, actor_class):
    probe = actor_class.remote()
    pid = ray_session.get(probe.pid.remote(), timeout=120)
    ref = probe.slow.remote(60)
    os.kill(pid, signal.SIGKILL)
    assert loss_of(failure_of(ref)) == "died"


def test_a_call_whose_input_came_from_a_dead_actor_is_an_input_loss(ray_session, actor_class):
    producer, consumer = actor_class.remote(), actor_class.remote()
    pid = ray_session.get(producer.pid.remote(), timeout=120)
    weights = producer.slow.remote(60)
    ref = consumer.add.remote(weights)  # waits for `weights`, which never come
    os.kill(pid, signal.SIGKILL)
    exc = failure_of(ref)
    assert loss_of(exc) == "input lost"
    assert loss_of(failure_of(weights)) == "died"
    ray_session.kill(consumer)


def test_a_hang_past_the_timeout_is_hung_and_own_exceptions_are_not_losses(ray_session, actor_class):
    sleeper, probe = actor_class.remote(), actor_class.remote()
    assert loss_of(failure_of(sleeper.slow.remote(60), timeout=1)) == "hung"
    exc = failure_of(probe.boom.remote())
    assert loss_of(exc) is None and "ValueError" in first_line(exc)
    ray_session.kill(sleeper)
    ray_session.kill(probe)
