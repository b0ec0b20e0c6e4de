"""Who may connect: only the job's sites, under valid names, once each; a site's peer listener only its peers.

Every attack is a Rogue (tests/hostile/rogue.py) speaking the wire to a real listener: the server's (a
ServerRuntime's transport, so its membership rule is the one under test) or a direct_p2p site's.
"""

from __future__ import annotations

import logging
import time

import pytest
from rogue import Rogue
from wire_fixtures.inbox import Inbox

from flarelite import certs
from flarelite.apis.client import Client
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.communication.memory import InMemoryCommunicationProtocol, InMemoryHub
from flarelite.communication.protocol import Frame, site_name_problem
from flarelite.errors import ConnectError
from flarelite.runtime.logs import close_site_log, open_site_log
from flarelite.runtime.server import ServerRuntime

BAD_NAMES = ["evil\x1b[2J\nFAKE LINE", "x" * 65, "server", "@ALL", "a b", "../etc", "", "-lead", "s\u2028x"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("admission-pki")
    certs.init_ca(root, "main")
    certs.issue(root, "server", "server")
    for name in ("site-1", "site-2", "site-9"):
        certs.issue(root, name)
    return root


@pytest.fixture
def stack():
    """Things to stop at the end (endpoints, runtimes' protocols, rogues), last started first."""
    items: list = []
    yield items
    for item in reversed(items):
        item.close() if isinstance(item, Rogue) else item.stop()


def server_runtime(tmp, tls: TLSConfig, clients: list[str] | None, stack: list, **options) -> ServerRuntime:
    """A ServerRuntime whose transport is open (its admission rule installed), listening on a Unix socket."""
    protocol = GrpcCommunicationProtocol("server", listen=f"unix://{tmp}/s.sock", tls=tls, **options)
    runtime = ServerRuntime(
        job_id="job", protocol=protocol, run_dir=tmp, workspace_root=tmp, app_config={}, clients=clients
    )
    runtime.open()
    stack.append(protocol)
    return runtime


def rogue(stack: list, target: str, tls: TLSConfig | None = None) -> Rogue:
    r = Rogue(target, tls, timeout=30)
    stack.append(r)
    return r


def body(env) -> str:
    return env.WhichOneof("body")


# ----------------------------------------------------------------------------------------------- membership


def test_a_clear_hello_with_a_name_outside_the_job_is_refused_at_hello(short_dir, stack):
    runtime = server_runtime(short_dir, TLSConfig("clear"), ["site-1", "site-2"], stack)
    target = runtime.protocol.bound
    env = rogue(stack, target).hello("site-9")
    assert body(env) == "refused"
    assert "not a site of this job" in env.refused.reason and "site-9" in env.refused.reason
    assert "site-9" not in runtime.protocol._conns and "site-9" not in runtime._joined
    assert body(rogue(stack, target).hello("site-1")) == "welcome"  # a member still gets in


def test_an_mtls_certificate_for_a_site_outside_the_job_is_refused(pki, short_dir, stack):
    runtime = server_runtime(short_dir, TLSConfig.from_dir("mtls", pki, "server"), ["site-1", "site-2"], stack)
    target = runtime.protocol.bound
    env = rogue(stack, target, TLSConfig.from_dir("mtls", pki, "site-9")).hello("site-9")  # a valid certificate
    assert body(env) == "refused" and "not a site of this job" in env.refused.reason
    assert "site-9" not in runtime.protocol._conns
    assert body(rogue(stack, target, TLSConfig.from_dir("mtls", pki, "site-1")).hello("site-1")) == "welcome"


def test_a_job_for_all_sites_admits_new_names_until_the_run_starts(short_dir, stack):
    runtime = server_runtime(short_dir, TLSConfig("clear"), None, stack)
    target = runtime.protocol.bound
    assert body(rogue(stack, target).hello("site-1")) == "welcome"
    with runtime._cv:  # what _wait_ready does when the run starts with site-1
        runtime.clients = {"site-1": Client("site-1")}
        runtime._started = True
    env = rogue(stack, target).hello("site-7")
    assert body(env) == "refused" and "already started" in env.refused.reason


def test_the_in_memory_transport_keeps_the_same_rule():
    hub = InMemoryHub()
    server, s_in = InMemoryCommunicationProtocol("server", hub=hub), Inbox()
    server.set_admission(lambda name: None if name == "site-1" else f"{name!r} is not a site of this job")
    server.start(s_in.on_frame, s_in.on_peer)
    member = InMemoryCommunicationProtocol("site-1", hub=hub)
    outsider = InMemoryCommunicationProtocol("site-9", hub=hub)
    member.start(lambda f: None)
    with pytest.raises(ConnectError, match="not a site of this job"):
        outsider.start(lambda f: None)
    member.send("server", Frame(kind="x"))
    assert s_in.get().sender == "site-1" and s_in.peer_events() == [("site-1", True)]
    server.stop()
    member.stop()


# ----------------------------------------------------------------------------------------------- names


def test_site_names_are_checked_everywhere_a_name_enters():
    assert site_name_problem("site-1") is None and site_name_problem("a.b_C-9") is None
    for name in BAD_NAMES:
        assert site_name_problem(name), name


def test_invalid_names_are_refused_at_hello_and_logged_escaped(short_dir, stack, caplog, tmp_path):
    runtime = server_runtime(short_dir, TLSConfig("clear"), None, stack)  # @ALL: any valid new name would do
    target = runtime.protocol.bound
    open_site_log("server", str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="flarelite.grpc"):
            for name in BAD_NAMES:
                env = rogue(stack, target).hello(name)
                assert body(env) == "refused", name
                assert "not a valid site name" in env.refused.reason or "own name" in env.refused.reason, name
                runtime.protocol._stream_log = None  # a fresh rate limit: see every refusal
            # a runtime record about such a name, written to the site log file
            runtime.log.warning("refused %s", BAD_NAMES[0])
    finally:
        close_site_log("server")
    assert runtime.clients == {}
    text = caplog.text + (tmp_path / "log.txt").read_text()
    assert "evil\\x1b[2J\\nFAKE LINE" in text
    assert "\x1b" not in text and "\nFAKE LINE" not in text and "\u2028" not in text


# ----------------------------------------------------------------------------------------------- duplicates


def test_clear_mode_a_second_hello_as_a_connected_site_never_takes_its_place(short_dir, stack):
    runtime = server_runtime(short_dir, TLSConfig("clear"), ["site-1", "site-2"], stack, heartbeat_interval=0.5)
    server = runtime.protocol
    inbox = Inbox()
    real = GrpcCommunicationProtocol("site-2", server=server.bound, connect_timeout=10)
    real.start(inbox.on_frame, inbox.on_peer)
    stack.append(real)
    took = 0
    for _ in range(50):
        r = Rogue(server.bound, timeout=30)
        env = r.hello("site-2")
        took += body(env) == "welcome"
        assert body(env) == "refused" and env.refused.reason.startswith("already connected"), env
        r.close()
    assert took == 0
    server.send("site-2", Frame(kind="still-yours", meta=b"m"))
    assert inbox.get().kind == "still-yours"  # the real site-2 kept its connection throughout


def test_mtls_the_certificate_owner_replaces_its_own_stale_connection(pki, short_dir, stack):
    runtime = server_runtime(short_dir, TLSConfig.from_dir("mtls", pki, "server"), ["site-1"], stack)
    cfg = TLSConfig.from_dir("mtls", pki, "site-1")
    old = rogue(stack, runtime.protocol.bound, cfg)
    assert body(old.hello("site-1")) == "welcome"
    assert body(rogue(stack, runtime.protocol.bound, cfg).hello("site-1")) == "welcome"
    assert old.wait_ended(10)  # the stale one was closed


def test_clear_mode_a_site_whose_old_connection_lingers_gets_back_in(short_dir, stack):
    """The server still holds a silent connection under site-2's name; site-2 retries until heartbeats end it."""
    runtime = server_runtime(
        short_dir, TLSConfig("clear"), ["site-2"], stack, heartbeat_interval=0.3, heartbeat_timeout=1.5
    )
    stale = rogue(stack, runtime.protocol.bound)
    assert body(stale.hello("site-2")) == "welcome"  # then it says nothing more: a dead peer the server trusts
    inbox = Inbox()
    site = GrpcCommunicationProtocol("site-2", server=runtime.protocol.bound, connect_timeout=15)
    began = time.monotonic()
    site.start(inbox.on_frame, inbox.on_peer)  # refused "already connected" at first, retried, then admitted
    stack.append(site)
    assert time.monotonic() - began < 12
    runtime.protocol.send("site-2", Frame(kind="welcome-back"))
    assert inbox.get().kind == "welcome-back"


# ----------------------------------------------------------------------------------------------- peer listeners


def test_a_peer_listener_accepts_only_announced_peers_never_the_server(short_dir, stack):
    server = GrpcCommunicationProtocol("server", listen=f"unix://{short_dir}/s.sock")
    server.start(lambda f: None)
    stack.append(server)
    sites = {}
    for name in ("site-1", "site-2"):
        inbox = Inbox()
        ep = GrpcCommunicationProtocol(name, server=server.bound, direct_p2p=True, connect_timeout=10)
        ep.start(inbox.on_frame, inbox.on_peer)
        stack.append(ep)
        sites[name] = (ep, inbox)
    site1, in1 = sites["site-1"]
    in1.wait_peer("site-2", True)
    listener = site1.bound
    for name, why in [("server", "server"), ("site-9", "not a peer"), ("site-1", "own name")]:
        env = rogue(stack, listener).hello(name)
        assert body(env) == "refused" and why in env.refused.reason, (name, env)
    # site-2 itself is connected directly already: a second "site-2" does not replace it
    env = rogue(stack, listener).hello("site-2")
    assert body(env) == "refused"
    assert in1.frames.empty()
    sites["site-2"][0].send("site-1", Frame(kind="from-the-real-site-2"))
    got = in1.get()
    assert (got.kind, got.sender) == ("from-the-real-site-2", "site-2")


def test_clear_mode_a_reconnecting_site_retries_until_the_server_lets_go_of_its_old_connection(short_dir, stack):
    """The network drops site-2's stream, but the server still holds a live-looking connection under its name:
    the site's reconnect is refused "already connected", retries, and is admitted once heartbeats end the old one."""
    import asyncio

    from flarelite.communication.grpc.connection import Connection

    runtime = server_runtime(
        short_dir, TLSConfig("clear"), ["site-2"], stack, heartbeat_interval=0.3, heartbeat_timeout=1.5
    )
    server = runtime.protocol
    inbox = Inbox()
    site = GrpcCommunicationProtocol("site-2", server=server.bound, connect_timeout=10, heartbeat_interval=0.3)
    site.start(inbox.on_frame, inbox.on_peer)
    stack.append(site)

    async def drop_but_keep_a_ghost() -> None:
        async def nowhere(env) -> None:
            return None

        ghost = Connection("site-2", nowhere, 0.3)  # silent from now on: heartbeats close it in 1.5 s
        server._spawn(ghost.run_heartbeat(1.5))
        real, server._conns["site-2"] = server._conns["site-2"], ghost
        real.close("the network dropped it")

    asyncio.run_coroutine_threadsafe(drop_but_keep_a_ghost(), server._loop).result(5)
    inbox.wait_peer("server", False)
    inbox.wait_peer("server", True, timeout=15)  # back in, after "already connected" refusals
    server.send("site-2", Frame(kind="welcome-back"))
    assert inbox.get().kind == "welcome-back"


def test_a_site_left_out_when_the_run_starts_is_cut_off_and_reaches_no_one(short_dir, stack, caplog, monkeypatch):
    """@ALL: site-7 joined but the run started without it; what it sends from then on reaches no site."""
    import queue

    from flarelite.communication.grpc import listening

    monkeypatch.setattr(listening, "MEMBER_RECHECK", 0.2)
    monkeypatch.setattr(listening, "MEMBER_GRACE", 0.5)
    runtime = server_runtime(short_dir, TLSConfig("clear"), None, stack, heartbeat_interval=0.2)
    target = runtime.protocol.bound
    ends = {}
    for name in ("site-1", "site-7"):
        inbox = Inbox()
        ep = GrpcCommunicationProtocol(name, server=target, connect_timeout=10, heartbeat_interval=0.2)
        ep.start(inbox.on_frame, inbox.on_peer)
        stack.append(ep)
        ends[name] = (ep, inbox)
    in1, (site7, in7) = ends["site-1"][1], ends["site-7"]
    in1.wait_peer("site-7", True)
    site7.send("site-1", Frame(kind="before-the-start"))
    assert in1.get().kind == "before-the-start"
    with caplog.at_level(logging.WARNING, logger="flarelite.grpc"):
        with runtime._cv:  # the run starts with site-1 only
            runtime.clients = {"site-1": Client("site-1")}
            runtime._started = True
        deadline = time.monotonic() + 10
        while "site-7 is no longer admitted" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    try:
        site7.send("site-1", Frame(kind="after-the-start"))
    except ConnectError:
        pass  # already cut off
    in7.wait_peer("server", False, timeout=10)
    with pytest.raises(queue.Empty):
        in1.get(timeout=0.5)
    runtime.protocol.send("site-1", Frame(kind="still-served"))
    assert in1.get().kind == "still-served"
