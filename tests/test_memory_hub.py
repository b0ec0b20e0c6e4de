"""The in-memory hub's peer events: the server hears of every site, a site of the peers it exchanged frames with."""

from __future__ import annotations

from flarelite.communication.memory import InMemoryCommunicationProtocol, InMemoryHub
from flarelite.communication.protocol import Frame


class Events:
    def __init__(self):
        self.seen = []

    def on_peer(self, name, connected):
        self.seen.append((name, connected))


def endpoint(hub, name, admission=False):
    ep, events = InMemoryCommunicationProtocol(name, hub=hub), Events()
    if admission:
        ep.set_admission(lambda n: None)
    ep.start(lambda frame: None, events.on_peer)
    return ep, events


def test_the_server_hears_of_every_site_and_a_site_only_of_the_peers_it_talked_to():
    hub = InMemoryHub()
    server, at_server = endpoint(hub, "server", admission=True)
    sites = [endpoint(hub, f"site-{i}") for i in range(1, 51)]
    assert sorted(at_server.seen) == sorted((f"site-{i}", True) for i in range(1, 51))
    (one, at_one), (two, _) = sites[0], sites[1]
    one.send("site-2", Frame(kind="x"))
    one.send("server", Frame(kind="x"))
    for ep, _ in sites[2:]:
        ep.stop()
    assert at_one.seen == []  # 48 sites it never exchanged a frame with left: nothing to tell it
    two.stop()
    assert at_one.seen == [("site-2", False)]
    hub.disconnect("server")
    assert at_one.seen[-1] == ("server", False)
    hub.reconnect("server")
    assert at_one.seen[-1] == ("server", True) and ("site-1", True) in at_server.seen
    assert sum(1 for e in at_server.seen if not e[1]) == 50  # every site's leaving (site-1's by the cut)
    one.stop()
    server.stop()


def test_a_receiver_knows_its_sender_too():
    hub = InMemoryHub()
    a, at_a = endpoint(hub, "a")
    b, at_b = endpoint(hub, "b")
    a.send("b", Frame(kind="x"))
    a.stop()
    assert at_b.seen == [("a", False)] and at_a.seen == []
    b.stop()
