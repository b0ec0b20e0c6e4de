"""Tasks from the server's controller to the clients: operators, completion rules, executor outcomes, failures."""

from __future__ import annotations

import os
import shutil

import pytest
import sim_components as sc
from support import comp, read_log, run_job, write_job

from flarelite.apis.controller_spec import TaskCompletionStatus
from flarelite.apis.fl_constant import ReturnCode
from flarelite.errors import ConfigError, RunFailedError
from flarelite.simulator.runner import run_simulation

BEHAVE = [{"tasks": ["*"], "executor": comp("sim_components.BehaviourExecutor")}]


@pytest.fixture(autouse=True)
def _reset():
    sc.reset()
    yield
    sc.reset()


def run_bcast(tmp_path, n_clients=3, executors=BEHAVE, protocol="memory", **args):
    workflows = [comp("sim_components.BroadcastController", **args)]
    return run_job(tmp_path, workflows, executors, n_clients=n_clients, protocol=protocol)


def test_broadcast_and_wait_collects_every_result(tmp_path):
    assert run_bcast(tmp_path, task_name="work", min_responses=0) == 0
    assert sc.RESULTS["status"] == TaskCompletionStatus.OK
    assert sorted(sc.RESULTS["received"]) == [("site-1", "OK"), ("site-2", "OK"), ("site-3", "OK")]
    assert sc.RESULTS["done_cb"] == TaskCompletionStatus.OK
    assert sc.RESULTS["standing"] == 0


def test_broadcast_min_responses_returns_after_the_first_results(tmp_path):
    # site-N sleeps 0.4*N s: with min_responses=1 and no extra wait, the task ends after site-1 answers.
    assert run_bcast(tmp_path, task_name="sleep", min_responses=1) == 0
    assert sc.RESULTS["status"] == TaskCompletionStatus.OK
    assert [r[0] for r in sc.RESULTS["received"]] == ["site-1"]
    assert sc.RESULTS["elapsed"] < 0.75


def test_broadcast_wait_time_after_min_received(tmp_path):
    assert run_bcast(tmp_path, task_name="sleep", min_responses=1, wait_time_after_min_received=0.6) == 0
    assert [r[0] for r in sc.RESULTS["received"]] == ["site-1", "site-2"]


def test_task_timeout_ends_the_task_with_timeout(tmp_path):
    assert run_bcast(tmp_path, task_name="sleep", min_responses=0, timeout=1) == 0
    assert sc.RESULTS["status"] == TaskCompletionStatus.TIMEOUT
    assert sorted(r[0] for r in sc.RESULTS["received"]) == ["site-1", "site-2"]
    assert 0.9 < sc.RESULTS["elapsed"] < 1.6


def test_send_and_wait_to_one_named_site(tmp_path):
    assert run_bcast(tmp_path, task_name="work", mode="send", targets=["site-2"]) == 0
    assert sc.RESULTS["status"] == TaskCompletionStatus.OK
    assert sc.RESULTS["received"] == [("site-2", "OK")]


def test_send_any_picks_one_site(tmp_path):
    assert run_bcast(tmp_path, task_name="work", mode="send_any") == 0
    assert len(sc.RESULTS["received"]) == 1


def test_relay_visits_every_site_in_order(tmp_path):
    assert run_bcast(tmp_path, task_name="work", mode="relay") == 0
    assert sc.RESULTS["received"] == [("site-1", "OK"), ("site-2", "OK"), ("site-3", "OK")]
    assert sc.RESULTS["status"] == TaskCompletionStatus.OK


@pytest.mark.parametrize(
    "task_name, rc",
    [
        ("raise", ReturnCode.EXECUTION_EXCEPTION),
        ("bad_result", ReturnCode.EXECUTION_RESULT_ERROR),
    ],
)
def test_executor_failures_become_return_codes_and_the_site_keeps_running(tmp_path, task_name, rc):
    assert run_bcast(tmp_path, task_name=task_name, min_responses=0) == 0
    assert sorted(sc.RESULTS["received"]) == [("site-1", rc), ("site-2", rc), ("site-3", rc)]
    if task_name == "raise":
        log = read_log(tmp_path, "site-1")
        assert "execute failed on purpose" in log and "Traceback" in log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["memory", "unix"])
@pytest.mark.parametrize("task_name, what", [("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt")])
def test_an_executor_that_exits_or_is_interrupted_fails_the_run_naming_it(tmp_path, protocol, task_name, what):
    """sys.exit() in execute used to hang the run: in memory it killed a pool thread and left the site's lane
    taken; in processes the site said an ordinary goodbye and the server waited for its result for ever."""
    workflows = [comp("sim_components.BroadcastController", task_name=task_name, min_responses=0)]
    folder = write_job(tmp_path / "jobs", workflows, BEHAVE)
    custom = os.path.join(folder, "app", "custom")  # (the site processes import it from the job)
    os.makedirs(custom, exist_ok=True)
    shutil.copy(sc.__file__, custom)
    with pytest.raises(RunFailedError, match=f"site-1.*{what}"):
        run_simulation(folder, str(tmp_path / "ws"), n_clients=3, protocol=protocol, end_timeout=10)


def test_no_executor_for_the_task_is_task_unknown(tmp_path):
    executors = [{"tasks": ["other"], "executor": comp("sim_components.BehaviourExecutor")}]
    assert run_bcast(tmp_path, executors=executors, task_name="work", min_responses=0) == 0
    assert sorted(sc.RESULTS["received"]) == [(f"site-{i}", ReturnCode.TASK_UNKNOWN) for i in (1, 2, 3)]
    assert "no executor for task 'work'" in read_log(tmp_path, "site-2")


def test_cancelled_task_is_aborted_at_the_client(tmp_path):
    # "wait_abort" never returns by itself; the task times out and the clients' abort signals fire.
    assert run_bcast(tmp_path, task_name="wait_abort", min_responses=0, timeout=1) == 0
    assert sc.RESULTS["status"] == TaskCompletionStatus.TIMEOUT
    assert all(sc.RESULTS.get(("aborted", f"site-{i}")) for i in (1, 2, 3))


def test_exception_in_control_flow_fails_the_run(tmp_path):
    with pytest.raises(RunFailedError, match="control_flow failed on purpose"):
        run_job(tmp_path, [comp("sim_components.FailingController")], BEHAVE)
    assert "ZeroDivisionError" in read_log(tmp_path, "server")


def test_component_that_cannot_be_built_fails_the_run(tmp_path):
    with pytest.raises(RunFailedError, match=r"cannot construct sim_components.BadArgController\(value=-1\)"):
        run_job(tmp_path, [comp("sim_components.BadArgController", value=-1)], BEHAVE)


def test_component_that_cannot_be_imported_fails_the_run(tmp_path):
    executors = [{"tasks": ["*"], "executor": comp("no_such_module.Executor")}]
    with pytest.raises(RunFailedError, match="cannot import module 'no_such_module'"):
        run_job(
            tmp_path,
            [comp("sim_components.BroadcastController")],
            executors,
            allowed_classes=["sim_components", "no_such_module"],  # allowed, so the import itself is tried
        )


def test_system_panic_at_a_site_ends_the_run(tmp_path):
    executors = [{"tasks": ["*"], "executor": comp("sim_components.PanicExecutor")}]
    with pytest.raises(RunFailedError, match="cannot continue on purpose"):
        run_job(tmp_path, [comp("sim_components.BroadcastController", task_name="x", min_responses=0)], executors)


def test_bad_client_count_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        run_job(tmp_path, [comp("sim_components.BroadcastController")], BEHAVE, n_clients=0)


def test_events_fire_in_order_at_each_site(tmp_path):
    executors = [{"tasks": ["*"], "executor": comp("sim_components.ProbeExecutor")}]
    scen = [dict(name="ok", site="site-1", topic="ok", targets=["site-2"])]
    assert run_job(tmp_path, [comp("sim_components.ProbeController", scenarios=scen)], executors, n_clients=2) == 0
    from flarelite.apis.event_type import EventType as E

    site1 = [e for s, e in sc.EVENTS if s == "site-1"]
    order = [
        E.SYSTEM_START,
        E.ABOUT_TO_START_RUN,
        E.START_RUN,
        E.BEFORE_TASK_EXECUTION,
        E.AFTER_TASK_EXECUTION,
        E.ABOUT_TO_END_RUN,
        E.END_RUN,
    ]
    assert [e for e in site1 if e in order] == order
