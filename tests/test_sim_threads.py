"""The in-process simulator's sites share bounded thread pools: idle sites hold no thread, the limit is named."""

from __future__ import annotations

import threading
import time

import pytest
import sim_components as sc
from support import comp, run_job

from flarelite.errors import RunFailedError
from flarelite.runtime import pool


@pytest.fixture(autouse=True)
def _reset():
    sc.reset()
    yield
    sc.reset()


def test_idle_sites_hold_no_threads(tmp_path):
    before = {t.ident for t in threading.enumerate()}  # threads other tests left behind are not this run's
    run_job(
        tmp_path,
        [comp("sim_components.ThreadsController", quiet=pool.IDLE_TIMEOUT + 1)],
        [{"tasks": ["work"], "executor": comp("sim_components.TogetherExecutor")}],
        n_clients=150,
        max_clients=150,
    )
    names = [name for ident, name in sc.RESULTS["threads"] if ident not in before]
    assert not [n for n in names if n.startswith("site-")], names  # no site has a thread of its own
    assert len(names) < 40, names  # the server's, and the pools' (idle ones have gone)
    assert sc.RESULTS["rcs"] == ["OK"]  # and all 150 ran their task at once when it came


def test_sites_that_wait_for_each_other_run_up_to_the_limit(tmp_path):
    run_job(
        tmp_path,
        [comp("sim_components.ThreadsController")],
        [{"tasks": ["work"], "executor": comp("sim_components.TogetherExecutor")}],
        n_clients=4,
        max_blocked_sites=4,
    )
    assert sc.RESULTS["rcs"] == ["OK"]


def test_more_sites_waiting_for_each_other_than_the_limit_fail_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "STALL_TIMEOUT", 1.0)
    t0 = time.monotonic()
    with pytest.raises(RunFailedError, match=r"max_blocked_sites=2.*raise max_blocked_sites"):
        run_job(
            tmp_path,
            [comp("sim_components.ThreadsController")],
            [{"tasks": ["work"], "executor": comp("sim_components.TogetherExecutor")}],
            n_clients=3,
            max_blocked_sites=2,
        )
    assert time.monotonic() - t0 < 30  # no hang: the blocked executors see the abort


@pytest.mark.parametrize("bad", [0, -1, True, "10"])
def test_max_blocked_sites_must_be_a_positive_int(tmp_path, bad):
    with pytest.raises(Exception, match="max_blocked_sites must be a positive int"):
        run_job(tmp_path, [comp("sim_components.ThreadsController")], [], n_clients=1, max_blocked_sites=bad)


def test_a_bad_max_blocked_sites_leaves_the_earlier_run_where_it_is(tmp_path):
    run_job(tmp_path, [comp("sim_components.ThreadsController")], [], n_clients=1)
    for _ in range(4):  # more tries than earlier runs kept: none may push the real one out
        with pytest.raises(Exception, match="max_blocked_sites must be a positive int"):
            run_job(tmp_path, [comp("sim_components.ThreadsController")], [], n_clients=1, max_blocked_sites=0)
    assert (tmp_path / "ws" / "server").is_dir() and not list((tmp_path / "ws").glob(".previous-*"))
