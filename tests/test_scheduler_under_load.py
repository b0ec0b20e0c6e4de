"""The server's task scheduler under slow and hostile clients: a broadcast sends its task to every site side by
side (a site that takes its task slowly delays only its own copy, and the broadcast returns once every copy is
sent or has failed), and a client's flood of result frames is bounded."""

from __future__ import annotations

import threading
import time

from flarelite.apis.controller_spec import Task
from flarelite.apis.shareable import Shareable
from flarelite.communication.memory import InMemoryCommunicationProtocol, InMemoryHub
from flarelite.errors import TransportClosed
from flarelite.runtime.frames import Kind
from flarelite.runtime.server import ServerRuntime

SITES = ["site-1", "site-2", "site-3", "site-4"]


def make_server(tmp_path) -> ServerRuntime:
    server = ServerRuntime(
        job_id="j",
        protocol=InMemoryCommunicationProtocol("server", hub=InMemoryHub()),
        run_dir=str(tmp_path),
        workspace_root=str(tmp_path),
        app_config={},
        clients=list(SITES),
    )
    server.scheduler.start()
    return server


def test_a_slow_site_does_not_hold_up_the_others(tmp_path):
    server = make_server(tmp_path)
    release = threading.Event()
    sent: dict[str, float] = {}
    after_cb: list[str] = []

    def send_frame(target, frame, timeout=None):
        if frame.kind != Kind.TASK:  # the aborts of the cleanup at the end
            return
        if target == "site-2":
            assert release.wait(10), "the test never released site-2"
        elif target == "site-4":
            raise TransportClosed("site-4's connection closed while its task was written")
        sent[target] = time.monotonic()

    server.send_frame = send_frame  # type: ignore[method-assign]
    task = Task(
        name="train",
        data=Shareable(),
        after_task_sent_cb=lambda client_task, fl_ctx: after_cb.append(client_task.client.name),
    )
    done = threading.Event()

    def broadcast() -> None:
        server.scheduler.broadcast(task, server.new_context(), min_responses=0)
        done.set()

    began = time.monotonic()
    threading.Thread(target=broadcast, daemon=True).start()
    deadline = time.monotonic() + 10
    while not {"site-1", "site-3"} <= set(sent) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert {"site-1", "site-3"} <= set(sent), "the fast sites waited for the slow one"
        assert max(sent.values()) - began < 5
        assert not done.is_set(), "the broadcast returned before site-2's copy was sent"
    finally:
        release.set()
    assert done.wait(10)
    assert set(sent) == {"site-1", "site-2", "site-3"}
    assert sorted(after_cb) == ["site-1", "site-2", "site-3"]  # not for the copy that failed
    assert "site-4" in server.scheduler._away  # kept for it: re-sent if it comes back, CLIENT_DEAD if not
    server.scheduler.cancel_all_tasks()
    server.scheduler.stop()


def test_a_flood_of_result_frames_is_bounded_per_client(tmp_path, caplog):
    """A client has a few tasks at a time: at most MAX_QUEUED_RESULTS of its results wait for the scheduler."""
    import logging

    from flarelite.communication.protocol import Frame
    from flarelite.runtime import scheduler as scheduler_module

    server = ServerRuntime(
        job_id="j",
        protocol=InMemoryCommunicationProtocol("server", hub=InMemoryHub()),
        run_dir=str(tmp_path),
        workspace_root=str(tmp_path),
        app_config={},
        clients=list(SITES),
    )
    caplog.set_level(logging.WARNING)
    for i in range(5000):  # the scheduler thread is not started: nothing is taken off its queue
        server.scheduler.on_result(Frame(kind=Kind.RESULT, sender="site-1", ref_id=f"forged-{i}"))
    server.scheduler.on_result(Frame(kind=Kind.RESULT, sender="site-2", ref_id="late"))
    assert server.scheduler._events.qsize() == scheduler_module.MAX_QUEUED_RESULTS + 1  # site-2's still went in
    assert caplog.text.count("result frame(s) from site-1") == 1
    server.scheduler.start()
    deadline = time.monotonic() + 10
    while server.scheduler._queued_results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.scheduler._queued_results == {}  # processed (as results of unknown tasks): room again
    server.scheduler.stop()


def _result_frame(name: str, client_task_id: str, task_name: str = "train"):
    from flarelite.runtime.frames import make_frame

    frame = make_frame(Kind.RESULT, Shareable(), msg_id=client_task_id, topic=task_name)
    frame.sender = name
    frame.ref_id = client_task_id
    return frame


def test_results_are_taken_while_a_broadcast_still_sends_and_follow_their_own_send(tmp_path):
    """A broadcast sends without the scheduler's lock: site-1's result is processed while site-2's task is still
    being written, and a result that comes before its own task is confirmed sent (site-2 answering at once)
    waits until then, so every client's after_task_sent_cb runs before its result_received_cb."""
    server = make_server(tmp_path)
    release = threading.Event()
    order: list[str] = []
    ids: dict[str, str] = {}

    def send_frame(target, frame, timeout=None):
        if frame.kind != Kind.TASK:
            return
        ids[target] = frame.msg_id
        if target == "site-2":
            server.scheduler.on_result(_result_frame("site-2", frame.msg_id))  # it answers before the send returns
            assert release.wait(10), "the test never released site-2"

    server.send_frame = send_frame  # type: ignore[method-assign]
    task = Task(
        name="train",
        data=Shareable(),
        after_task_sent_cb=lambda client_task, fl_ctx: order.append(f"sent {client_task.client.name}"),
        result_received_cb=lambda client_task, fl_ctx: order.append(f"result {client_task.client.name}"),
    )
    done = threading.Event()
    targets = ["site-1", "site-2"]
    threading.Thread(
        target=lambda: (
            server.scheduler.broadcast(task, server.new_context(), targets=targets, min_responses=2),
            done.set(),
        ),
        daemon=True,
    ).start()
    deadline = time.monotonic() + 10
    while "sent site-1" not in order and time.monotonic() < deadline:
        time.sleep(0.01)
    server.scheduler.on_result(_result_frame("site-1", ids["site-1"]))
    while "result site-1" not in order and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert "result site-1" in order, "site-1's result waited for the broadcast to finish sending"
        time.sleep(0.2)
        assert not any(step.endswith("site-2") for step in order), "site-2's result was taken before its send ended"
    finally:
        release.set()
    assert done.wait(10)
    while len(order) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "result site-2" in order, order
    assert order.index("sent site-2") < order.index("result site-2")
    assert order.index("sent site-1") < order.index("result site-1")
    assert server.scheduler._sending == set() and server.scheduler._early == {}
    server.scheduler.stop()


def test_a_second_early_result_for_the_same_task_is_not_kept(tmp_path):
    """A client answering twice while its task is still being written: the first result waits, the second is a
    result of no standing task (nothing more is held for it)."""
    server = make_server(tmp_path)
    release = threading.Event()
    unknown: list[str] = []
    received: list[str] = []
    server.result_of_unknown_task = lambda name, topic, ref, result, fl_ctx: unknown.append(name)  # type: ignore

    def send_frame(target, frame, timeout=None):
        if frame.kind == Kind.TASK and target == "site-1":
            for _ in range(2):
                server.scheduler.on_result(_result_frame("site-1", frame.msg_id))
            assert release.wait(10)

    server.send_frame = send_frame  # type: ignore[method-assign]
    task = Task(
        name="train",
        data=Shareable(),
        result_received_cb=lambda client_task, fl_ctx: received.append(client_task.client.name),
    )
    threading.Thread(
        target=lambda: server.scheduler.broadcast(
            task, server.new_context(), targets=["site-1", "site-3"], min_responses=2
        ),
        daemon=True,
    ).start()
    deadline = time.monotonic() + 10
    while not unknown and time.monotonic() < deadline:
        time.sleep(0.01)
    assert unknown == ["site-1"] and received == []
    assert len(server.scheduler._early) == 1
    release.set()
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received == ["site-1"]
    server.scheduler.cancel_all_tasks()
    server.scheduler.stop()
