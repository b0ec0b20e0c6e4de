"""With several targets, a request that has to wait for one of them (a large payload written slowly, a stalled
receiver) is sent side by side with the others: a slow target costs only its own reply its time."""

from __future__ import annotations

import threading
import time

import numpy as np

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.fl_constant import ReturnCode
from flarelite.communication.memory import InMemoryCommunicationProtocol, InMemoryHub
from flarelite.errors import TransportTimeout
from flarelite.runtime.client import ClientRuntime

TIMEOUT = 2.0


def site(hub: InMemoryHub, name: str, folder: str) -> ClientRuntime:
    rt = ClientRuntime(
        name=name,
        job_id="j",
        protocol=InMemoryCommunicationProtocol(name, hub=hub),
        run_dir=folder,
        workspace_root=folder,
        app_config={},
    )
    rt.open()
    rt.sites = ["server", "site-1", "site-2", "site-3"]
    return rt


def stalled_to_site_2(rt: ClientRuntime) -> list:
    """Make ``rt``'s sends to site-2 behave as the gRPC transport does toward a receiver that stopped reading."""
    original = rt.send_frame
    calls: list = []

    def send_frame(target, frame, timeout=None):
        calls.append((target, frame.nbytes, timeout))
        if target != "site-2":
            return original(target, frame, timeout=timeout)
        if timeout is not None and timeout <= 0:
            raise TransportTimeout("no room to send to 'site-2' now")
        time.sleep(timeout if timeout is not None else 60)
        raise TransportTimeout(f"frame to 'site-2' was not sent within {timeout}s")

    rt.send_frame = send_frame  # type: ignore[method-assign]
    return calls


def test_a_stalled_target_costs_only_its_own_reply(tmp_path):
    hub = InMemoryHub()
    folder = str(tmp_path)
    site1, site3 = site(hub, "site-1", folder), site(hub, "site-3", folder)
    site(hub, "site-2", folder)  # connected, but site-1's sends to it never get through
    site3.register_aux_message_handler(
        "model",
        lambda topic, request, fl_ctx: DXO(
            DataKind.APP_DEFINED, {"n": from_shareable(request).data["w"].size}
        ).to_shareable(),
    )
    site3.aux.set_ready()
    calls = stalled_to_site_2(site1)
    for payload in (np.zeros(4, np.float32), np.zeros(1 << 19, np.float32)):  # small, then 2 MiB
        calls.clear()
        request = DXO(DataKind.WEIGHTS, {"w": payload}).to_shareable()
        began = time.monotonic()
        replies = site1.send_aux_request(["site-2", "site-3"], "model", request, TIMEOUT, site1.new_context())
        took = time.monotonic() - began
        assert replies["site-3"].get_return_code() == ReturnCode.OK, f"{payload.nbytes} bytes: {replies['site-3']}"
        assert from_shareable(replies["site-3"]).data == {"n": payload.size}
        assert replies["site-2"].get_return_code() == ReturnCode.TIMEOUT
        assert took < TIMEOUT + 1.5, f"send_aux_request took {took:.1f}s with timeout {TIMEOUT}s"
        assert all(t is None or t <= TIMEOUT for _, _, t in calls)  # no send was given more than the timeout
    assert threading.active_count() < 100


def test_one_target_is_sent_on_the_callers_thread(tmp_path):
    """The common case pays nothing: a single target's request goes out inline, with the time left."""
    hub = InMemoryHub()
    folder = str(tmp_path)
    site1, site3 = site(hub, "site-1", folder), site(hub, "site-3", folder)
    site3.register_aux_message_handler("ping", lambda topic, request, fl_ctx: request)
    site3.aux.set_ready()
    seen: list = []
    original = site1.send_frame

    def send_frame(target, frame, timeout=None):
        seen.append(threading.current_thread())
        return original(target, frame, timeout=timeout)

    site1.send_frame = send_frame  # type: ignore[method-assign]
    reply = site1.send_aux_request(
        "site-3", "ping", DXO(DataKind.APP_DEFINED, {"a": 1}).to_shareable(), 5, site1.new_context()
    )
    assert reply["site-3"].get_return_code() == ReturnCode.OK
    assert seen == [threading.current_thread()]


def test_a_site_that_ends_its_run_lets_go_of_the_sends_still_waiting_for_replies(tmp_path):
    """An executor (or handler) blocked in send_aux_request must not outlive its site's run: the run ends, it
    returns with an error reply at once, not when its timeout runs out."""
    hub = InMemoryHub()
    folder = str(tmp_path)
    site1, site2 = site(hub, "site-1", folder), site(hub, "site-2", folder)
    release = threading.Event()
    site2.register_aux_message_handler("never", lambda topic, request, fl_ctx: release.wait(30) and None)
    site2.aux.set_ready()
    out: dict = {}

    def ask() -> None:
        request = DXO(DataKind.APP_DEFINED, {"q": 1}).to_shareable()
        out.update(site1.send_aux_request(["site-2"], "never", request, 60, site1.new_context()))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        time.sleep(0.3)  # the request waits at site-2's handler
        began = time.monotonic()
        site1.aux.close()
        asker.join(5)
        assert not asker.is_alive() and time.monotonic() - began < 2.0
        assert out["site-2"].get_return_code() == ReturnCode.SERVICE_UNAVAILABLE
    finally:
        release.set()
        asker.join(5)
        site2.aux.close()
