"""Aux channels end to end in the in-process simulator: targets, return codes, peers, threads, timeouts."""

from __future__ import annotations

import pytest
import sim_components as sc
from support import comp, read_log, run_job

from flarelite.apis.fl_constant import ReturnCode

PROBE_EXECUTOR = [{"tasks": ["*"], "executor": comp("sim_components.ProbeExecutor")}]


@pytest.fixture(autouse=True)
def _reset():
    sc.reset()
    yield
    sc.reset()


def probe(tmp_path, scenarios, server_handler=False, n_clients=3):
    assert (
        run_job(
            tmp_path,
            [comp("sim_components.ProbeController", scenarios=scenarios, server_handler=server_handler)],
            PROBE_EXECUTOR,
            n_clients=n_clients,
        )
        == 0
    )
    return sc.RESULTS


def rcs(result):
    return {k: v["rc"] for k, v in result.items() if k != "__thread__"}


def test_return_codes_of_every_outcome(tmp_path):
    results = probe(
        tmp_path,
        [
            dict(name="ok", site="site-1", topic="ok", targets=["site-2", "site-3"]),
            dict(name="raise", site="site-1", topic="raise", targets=["site-2"]),
            dict(name="bad", site="site-1", topic="bad", targets=["site-2"]),
            dict(name="slow", site="site-1", topic="slow", targets=["site-2"], timeout=0.3),
            dict(name="unknown_topic", site="site-1", topic="nope", targets=["site-2"]),
            dict(name="bad_target", site="site-1", topic="ok", targets=["site-2", "site-9"]),
        ],
    )
    assert rcs(results["ok"]) == {"site-2": ReturnCode.OK, "site-3": ReturnCode.OK}
    assert results["ok"]["site-3"]["data"] == {"echo": {"hello": "ok"}, "at": "site-3"}
    assert rcs(results["raise"]) == {"site-2": ReturnCode.HANDLER_EXCEPTION}
    assert rcs(results["bad"]) == {"site-2": ReturnCode.ERROR}
    assert rcs(results["slow"]) == {"site-2": ReturnCode.TIMEOUT}
    assert rcs(results["unknown_topic"]) == {"site-2": ReturnCode.TOPIC_UNKNOWN}
    assert rcs(results["bad_target"]) == {"site-2": ReturnCode.OK, "site-9": ReturnCode.ERROR}
    site1 = read_log(tmp_path, "site-1")
    assert "unknown target 'site-9'" in site1
    assert "timed out after 0.3s" in site1
    site2 = read_log(tmp_path, "site-2")
    assert "handler failed on purpose" in site2 and "Traceback" in site2
    assert "returned int, not a Shareable" in site2
    assert "no aux handler for topic 'nope'" in site2


def test_targets_none_reaches_every_other_party_including_the_server(tmp_path):
    results = probe(
        tmp_path,
        [
            dict(name="none", site="site-1", topic="ok", targets=None),
            dict(name="all", site="site-2", topic="ok", targets="@ALL"),
            dict(name="server", site="site-3", topic="ok", targets="server"),
        ],
    )
    assert rcs(results["none"]) == {
        "server": ReturnCode.TOPIC_UNKNOWN,
        "site-2": ReturnCode.OK,
        "site-3": ReturnCode.OK,
    }
    assert rcs(results["all"]) == {"server": ReturnCode.TOPIC_UNKNOWN, "site-1": ReturnCode.OK, "site-3": ReturnCode.OK}
    assert rcs(results["server"]) == {"server": ReturnCode.TOPIC_UNKNOWN}
    assert "no aux handler for topic 'ok'" in read_log(tmp_path, "server")


def test_targets_none_with_a_server_handler(tmp_path):
    results = probe(tmp_path, [dict(name="none", site="site-1", topic="ok", targets=None)], server_handler=True)
    assert rcs(results["none"]) == {"server": ReturnCode.OK, "site-2": ReturnCode.OK, "site-3": ReturnCode.OK}
    assert results["none"]["server"]["data"]["at"] == "server"


def test_receiver_sees_sender_identity_and_peer_context_on_a_worker_thread(tmp_path):
    results = probe(tmp_path, [dict(name="who", site="site-2", topic="who", targets="site-3")])
    data = results["who"]["site-3"]["data"]
    assert data["sender"] == "site-2"
    assert data["peer_identity"] == "site-2"
    assert data["peer_job"] == "simulate_job"
    assert data["me"] == "site-3"
    assert data["thread"].startswith("site-3-aux")  # not the thread that runs execute
    assert results["who"]["__thread__"].startswith("site-2-main")  # in memory: "site-2-main (sim-task_<i>)"


def test_multicast_sends_each_target_its_own_request(tmp_path):
    results = probe(tmp_path, [dict(name="m", site="site-2", topic="ok", targets=["site-1", "site-3"], multicast=True)])
    assert results["m"]["site-1"]["data"]["echo"] == {"for": "site-1"}
    assert results["m"]["site-3"]["data"]["echo"] == {"for": "site-3"}


def test_fire_and_forget_returns_nothing_and_still_delivers(tmp_path):
    results = probe(
        tmp_path,
        [
            dict(name="ff", site="site-3", topic="noted", targets=["site-1", "site-2"], timeout=0),
            dict(name="after", site="site-1", topic="ok", targets=["site-2"]),  # orders the check after delivery
        ],
    )
    assert rcs(results["ff"]) == {}
    assert results[("noted", "site-1")] == {"hello": "ff"}
    assert results[("noted", "site-2")] == {"hello": "ff"}


def test_handler_log_lines_carry_the_peer_context(tmp_path):
    results = probe(tmp_path, [dict(name="ok", site="site-1", topic="ok", targets=["site-2"])])
    assert rcs(results["ok"]) == {"site-2": ReturnCode.OK}
    log = read_log(tmp_path, "site-2")
    assert "[identity=site-2, run=simulate_job]" in log


@pytest.mark.parametrize("fire_and_forget", [False, True])
def test_all_to_all_exchange_from_blocked_executors_does_not_deadlock(tmp_path, fire_and_forget):
    n = 6
    assert (
        run_job(
            tmp_path,
            [comp("sim_components.ExchangeController")],
            [
                {
                    "tasks": ["exchange"],
                    "executor": comp("sim_components.ExchangeExecutor", rounds=4, fire_and_forget=fire_and_forget),
                }
            ],
            n_clients=n,
        )
        == 0
    )
    values = sc.RESULTS["exchange"]
    assert len(values) == n
    mean = sum(range(1, n + 1)) / n
    assert all(v == pytest.approx(mean) for v in values.values()), values


def test_requests_to_a_site_not_ready_yet_wait_for_it(tmp_path):
    assert (
        run_job(
            tmp_path,
            [comp("sim_components.BroadcastController", min_responses=0)],
            [{"tasks": ["*"], "executor": comp("sim_components.EarlyBirdExecutor")}],
        )
        == 0
    )
    assert sc.RESULTS["early_replies"] == {"site-3": ReturnCode.OK}
    assert sc.RESULTS[("noted", "site-3")] == {"early": True}
    assert sc.RESULTS[("noted", "site-2")] == {"early": True}  # fire and forget, held until site-2 was ready


def test_payloads_pass_through_the_codec_and_topics_register_once(tmp_path):
    assert (
        run_job(
            tmp_path,
            [comp("sim_components.BroadcastController", min_responses=0)],
            [{"tasks": ["*"], "executor": comp("sim_components.IsolationExecutor")}],
            n_clients=2,
        )
        == 0
    )
    # the receiver got its own writable copy: mutating it changed nothing at the sender
    assert sc.RESULTS["mine_after"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert sc.RESULTS["back"] == [[100.0, 101.0, 102.0], [103.0, 104.0, 105.0]]
    assert sc.RESULTS["received_writable"] is True
    assert sc.RESULTS["back_types"] == ("ndarray", "float64", "float32")
    # an unsupported type fails at send time, naming the type and where it sits
    assert "set" in sc.RESULTS["unsupported"] and "['bad']" in sc.RESULTS["unsupported"]
    # registering a topic twice is a clear error
    message = sc.RESULTS[("twice", "site-1")]
    assert "already registered for topic 'mutate'" in message and "site-1" in message
