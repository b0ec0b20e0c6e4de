"""Filters in real runs: where each chain runs, in which order, "*" filters, and what a failing filter yields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from event_support import fixture_module

from flarelite import FilterType
from flarelite.apis.event_type import EventType
from flarelite.job_config import FedJob

SITES = ["site-1", "site-2"]
TASKS = ["train", "validate", "bad_srv_out", "bad_cli_in", "bad_cli_out", "bad_srv_in"]


@pytest.fixture(scope="module")
def fm() -> Iterator[ModuleType]:
    """The fixture components, imported as the top-level module ``filter_modules`` (export copies it)."""
    yield from fixture_module("filter_modules")


def build_job(fm: ModuleType, out_file: Path) -> FedJob:
    job = FedJob(name="filters", min_clients=2)
    job.to_server(fm.TraceController(tasks=TASKS, out_file=str(out_file)))
    job.to_clients(fm.TraceExecutor())
    # server, task data: "*" (the default tasks) and a failing one for its own task
    job.to(fm.TraceFilter("S-data-star"), "server", filter_type=FilterType.TASK_DATA)
    job.to(fm.FailingFilter("raise"), "server", tasks=["bad_srv_out"], filter_type=FilterType.TASK_DATA)
    # server, task result: explicit tasks
    job.to(fm.TraceFilter("S-result"), "server", tasks=["train", "validate"], filter_type=FilterType.TASK_RESULT)
    job.to(fm.FailingFilter("block"), "server", tasks=["bad_srv_in"], filter_type=FilterType.TASK_RESULT)
    # clients, task data: "*" and an exact task (both run on it, in the order they were added)
    job.to_clients(fm.TraceFilter("C-data-star"), filter_type=FilterType.TASK_DATA)
    job.to_clients(fm.FailingFilter("raise"), tasks=["bad_cli_in"], filter_type=FilterType.TASK_DATA)
    # clients, task result: "*", an exact "train" entry, and a filter that returns the wrong type
    job.to_clients(fm.TraceFilter("C-result-star"), filter_type=FilterType.TASK_RESULT)
    job.to_clients(fm.TraceFilter("C-result-train"), tasks=["train"], filter_type=FilterType.TASK_RESULT)
    job.to_clients(fm.FailingFilter("bad_return"), tasks=["bad_cli_out"], filter_type=FilterType.TASK_RESULT)
    return job


def stamp(mark: str, direction: str, site: str, peer: str, event: str) -> str:
    return "|".join([mark, direction, site, peer, "started", event])


def check_run(seen: dict) -> None:
    before_data, before_result = EventType.BEFORE_TASK_DATA_FILTER, EventType.BEFORE_TASK_RESULT_FILTER
    for site in SITES:
        server_out = stamp("S-data-star", "out", "server", site, before_data)
        client_in = stamp("C-data-star", "in", site, "server", before_data)
        server_in = stamp("S-result", "in", "server", site, before_result)
        # order: server-out, client-in, (execute), client-out, server-in; "*" filters ran, then the named ones
        train = seen["train"][site]
        assert train["rc"] == "OK"
        assert train["trace"] == [
            "ctl",
            server_out,
            client_in,
            f"exec@{site}",
            stamp("C-result-star", "out", site, "server", before_result),
            stamp("C-result-train", "out", site, "server", before_result),
            server_in,
        ]
        validate = seen["validate"][site]
        assert validate["trace"] == [
            "ctl",
            server_out,
            client_in,
            f"exec@{site}",
            stamp("C-result-star", "out", site, "server", before_result),
            server_in,
        ]
        # a server task data filter that raises: the client task ends with TASK_DATA_FILTER_ERROR, unsent
        got = seen["bad_srv_out"][site]
        assert got["rc"] == "TASK_DATA_FILTER_ERROR" and got["trace"] is None
        assert "FailingFilter" in got["error"] and "'bad_srv_out'" in got["error"] and "server" in got["error"]
        # a client task data filter that raises: the task is not executed
        got = seen["bad_cli_in"][site]
        assert got["rc"] == "TASK_DATA_FILTER_ERROR" and got["trace"] is None
        assert "FailingFilter" in got["error"] and "'bad_cli_in'" in got["error"] and site in got["error"]
        # a client result filter that returns the wrong type
        got = seen["bad_cli_out"][site]
        assert got["rc"] == "TASK_RESULT_FILTER_ERROR"
        assert "FailingFilter" in got["error"] and "not a Shareable" in got["error"]
        # a server result filter that blocks the content: the result is replaced
        got = seen["bad_srv_in"][site]
        assert got["rc"] == "TASK_RESULT_FILTER_ERROR" and got["trace"] is None
        assert "content blocked" in got["error"] and "'bad_srv_in'" in got["error"]
        assert all(seen[t][site]["cookie"] == t for t in TASKS), seen
    assert all(seen[t]["__status__"] == "TaskCompletionStatus.OK" for t in TASKS), seen


def test_filters_in_memory_run(fm: ModuleType, tmp_path: Path) -> None:
    out_file = tmp_path / "seen.json"
    assert build_job(fm, out_file).simulator_run(str(tmp_path / "ws"), n_clients=2, protocol="memory") == 0
    check_run(json.loads(out_file.read_text(encoding="utf-8")))


def test_filters_in_process_run(fm: ModuleType, tmp_path: Path) -> None:
    out_file = tmp_path / "seen.json"
    assert build_job(fm, out_file).simulator_run(str(tmp_path / "ws"), n_clients=2) == 0
    check_run(json.loads(out_file.read_text(encoding="utf-8")))
    log = (tmp_path / "ws" / "site-1" / "log.txt").read_text(encoding="utf-8")
    assert "task result filter FailingFilter failed on task 'bad_cli_out' at site-1" in log
