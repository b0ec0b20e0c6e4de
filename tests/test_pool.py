"""The shared thread pools of the in-process simulator: bounded, ordered per site, idle threads go, stalls are named."""

from __future__ import annotations

import threading
import time

import pytest
from support import wait_for

from flarelite.runtime.pool import Lane, SharedThreads, ThreadPool


class Counting:
    """Calls that count how many of them run at once (``most``) and how many ended (``done``)."""

    def __init__(self, work):
        self.work = work
        self.lock = threading.Lock()
        self.running = self.most = self.done = 0

    def __call__(self):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.work()
        with self.lock:
            self.running -= 1
            self.done += 1


def test_pool_runs_calls_on_at_most_max_threads_and_lets_idle_ones_go():
    pool = ThreadPool("t", 3, idle_timeout=0.2)
    release = threading.Event()
    call = Counting(lambda: release.wait(10))
    for _ in range(10):
        pool.submit(call)
    wait_for(lambda: call.running == 3, 10)
    assert pool.threads == 3
    release.set()
    wait_for(lambda: call.done == 10, 10)
    assert call.most == 3
    wait_for(lambda: pool.threads == 0, 10)  # idle threads exit: a quiet pool holds none
    assert not [t for t in threading.enumerate() if t.name.startswith("t_")]


def test_submit_future_gives_the_result_or_the_exception():
    pool = ThreadPool("f", 2)
    assert pool.submit_future(lambda a, b: a + b, 2, 3).result(10) == 5

    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        pool.submit_future(boom).result(10)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(print)


def test_lane_keeps_a_sites_calls_in_order_one_at_a_time():
    pool = ThreadPool("l", 8)
    lanes = [Lane(pool, f"site-{i}") for i in range(4)]
    got: dict[int, list[int]] = {i: [] for i in range(4)}
    active = [0] * 4
    overlap = []

    def call(site, n):
        active[site] += 1
        if active[site] > 1:
            overlap.append(site)
        time.sleep(0.001)
        got[site].append(n)
        active[site] -= 1

    for n in range(50):
        for i, lane in enumerate(lanes):
            lane.submit(call, i, n)
    wait_for(lambda: all(len(v) == 50 for v in got.values()), 30)
    assert all(v == list(range(50)) for v in got.values())
    assert not overlap


def test_lane_width_bounds_a_sites_calls_at_once():
    pool = ThreadPool("w", 16)
    lane = Lane(pool, "site-1", width=3)
    call = Counting(lambda: time.sleep(0.02))
    for _ in range(12):
        lane.submit(call)
    wait_for(lambda: call.done == 12, 30)
    assert call.most == 3


def test_lane_shutdown_drains_or_drops_and_then_refuses():
    pool = ThreadPool("s", 2)
    lane = Lane(pool, "site-1")
    done = []
    gate = threading.Event()
    lane.submit(lambda: (gate.wait(10), done.append(0)))
    lane.submit(lambda: done.append(1))
    gate.set()
    assert lane.shutdown(drain_timeout=10)
    assert done == [0, 1]
    with pytest.raises(RuntimeError, match="site-1"):
        lane.submit(print)

    dropping = Lane(pool, "site-2")
    gate.clear()
    dropping.submit(lambda: (gate.wait(10), done.append(2)))
    dropping.submit(lambda: done.append(3))
    assert not dropping.shutdown()  # its first call still runs; the queued one is dropped
    gate.set()
    wait_for(lambda: 2 in done, 10)
    time.sleep(0.1)
    assert 3 not in done


def test_a_full_pool_whose_threads_all_wait_reports_a_stall_naming_the_limit():
    stalls = []
    shared = SharedThreads(2, stall_timeout=0.5, on_stall=stalls.append)
    release = threading.Event()
    started = []

    def waits_for_the_others():  # as a synchronous peer-to-peer executor: waits until the third one ran
        started.append(1)
        while not release.is_set():
            release.wait(0.05)

    for i in range(2):
        shared.site_lane(f"site-{i}").submit(waits_for_the_others)
    shared.site_lane("site-2").submit(release.set)  # never gets a thread: both wait for it
    wait_for(lambda: stalls, 20)
    assert "max_blocked_sites=2" in stalls[0] and "1 calls wait" in stalls[0]
    release.set()
    shared.close()


def test_threads_that_poll_with_sleep_are_waiting_too():
    stalls = []
    shared = SharedThreads(2, stall_timeout=0.5, on_stall=stalls.append)
    release = threading.Event()

    def polls_for_the_others():  # as NVFlare-style code: while not there: time.sleep(...)
        while not release.is_set():
            time.sleep(0.05)

    for i in range(2):
        shared.site_lane(f"site-{i}").submit(polls_for_the_others)
    shared.site_lane("site-2").submit(release.set)
    wait_for(lambda: stalls, 20)
    assert "max_blocked_sites=2" in stalls[0]
    release.set()
    shared.close()


def test_threads_that_work_past_the_stall_timeout_are_not_a_stall():
    stalls = []
    pool = ThreadPool("c", 1, stall_timeout=0.3, on_stall=stalls.append)
    done = []

    def compute():
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            sum(range(1000))
        done.append(1)

    def compute_in_c():  # most of its time in one C call: one instruction, but the CPU is busy
        data = list(range(200_000))
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            sorted(data, reverse=True)
        done.append(3)

    pool.submit(compute)
    pool.submit(compute_in_c)
    pool.submit(done.append, 2)
    wait_for(lambda: len(done) == 3, 20)
    assert not stalls


def test_a_lanes_calls_left_when_its_pool_closes_are_dropped_and_it_drains():
    pool = ThreadPool("x", 1)
    lane = Lane(pool, "site-1")
    gate = threading.Event()
    done = []
    lane.submit(lambda: (gate.wait(10), done.append(0)))
    lane.submit(done.append, 1)
    pool.close()
    gate.set()
    assert lane.shutdown(drain_timeout=10)  # nothing of it is left running
    assert done == [0]
    with pytest.raises(RuntimeError):
        lane.submit(print)


def test_past_its_core_threads_the_pool_grows_only_while_its_threads_block():
    from flarelite.runtime.pool import CORE_THREADS

    quick = ThreadPool("q", 500)
    done = Counting(lambda: None)
    for _ in range(3000):
        quick.submit(done)
    wait_for(lambda: done.done == 3000, 30)
    assert quick.threads <= CORE_THREADS + 4  # short calls: the core threads keep up, hardly any more start

    blocking = ThreadPool("b", 500)
    release = threading.Event()
    waiting = Counting(lambda: release.wait(30))
    for _ in range(CORE_THREADS * 5):  # as sites that wait for each other: each needs a thread of its own
        blocking.submit(waiting)
    wait_for(lambda: waiting.running == CORE_THREADS * 5, 30)
    release.set()
    wait_for(lambda: waiting.done == CORE_THREADS * 5, 30)


def test_as_many_aux_handlers_may_block_as_sites_may_and_the_limit_is_named():
    """Each blocked executor's request may hold a handler that waits in turn (a relay of requests): 600 of them
    once broke a job well below max_blocked_sites, on a hidden limit of 256 handlers."""
    assert SharedThreads(1000).service.max_threads == 1000
    assert SharedThreads(2).service.max_threads == 256
    assert "max_blocked_sites=1000" in SharedThreads(1000).service.stall_hint


def test_a_failure_after_site_tasks_waited_for_a_thread_names_the_limit():
    shared = SharedThreads(1)
    gate = threading.Event()
    try:
        assert shared.explain("site-2 timed out") == "site-2 timed out"  # nothing waited: nothing to add
        shared.site_lane("site-1").submit(gate.wait, 5)
        shared.site_lane("site-2").submit(lambda: None)  # waits for the one thread
        wait_for(lambda: shared.tasks.waited_full == 1)
        assert "max_blocked_sites=1" in shared.explain("site-2 timed out")
        assert shared.explain("max_blocked_sites=1 ...") == "max_blocked_sites=1 ..."  # said already
    finally:
        gate.set()
        shared.close()
