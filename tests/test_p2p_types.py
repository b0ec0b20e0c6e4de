"""flarelite.app_opt.p2p.types: construction, validation, dict forms, the codec round trip, FedJob export."""

from __future__ import annotations

import json

import pytest

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.app_opt.p2p.controllers import DistOptController
from flarelite.app_opt.p2p.types import Config, LocalConfig, Neighbor, Network, Node
from flarelite.app_opt.p2p.utils import generate_random_network
from flarelite.errors import UnsupportedTypeError
from flarelite.job_config.api import FedJob
from flarelite.runtime.components import build_component
from flarelite.serialization import decode, encode


def roundtrip(value):
    encoded = encode(value)
    return decode(encoded.meta, encoded.buffers)


def sample_config() -> Config:
    network = Network(
        nodes=[
            Node(id="site-1", neighbors=[Neighbor("site-2", 0.25), Neighbor("site-3", 0.5)]),
            Node(id="site-2", neighbors=[Neighbor("site-1", 0.25)]),
            Node(id="site-3", neighbors=[{"id": "site-1", "weight": 0.5}]),
        ]
    )
    return Config(network=network, extra={"iterations": 10, "stepsize": 0.1, "nested": {"a": [1, 2]}})


def test_dicts_in_constructors_become_objects():
    config = sample_config()
    assert config.network.nodes[2].neighbors == [Neighbor(id="site-1", weight=0.5)]
    again = Config(network={"nodes": [{"id": "site-1", "neighbors": [{"id": "site-2", "weight": 1}]}]})
    assert isinstance(again.network, Network) and isinstance(again.network.nodes[0].neighbors[0], Neighbor)
    assert again.network.nodes[0].neighbors[0].weight == 1.0 and isinstance(
        again.network.nodes[0].neighbors[0].weight, float
    )
    # NVFlare's way of building a site's config from the task data
    local = LocalConfig(**{"neighbors": [{"id": "site-2", "weight": 0.1}]})
    assert local.neighbors == [Neighbor("site-2", 0.1)] and local.extra == {} and local.out_neighbors is None
    # the tutorial's controller sends neighbours as n.__dict__
    assert Neighbor("site-2", 0.1).__dict__ == {"id": "site-2", "weight": 0.1}


@pytest.mark.parametrize(
    "obj", [Neighbor("site-1"), Neighbor("site-1", 0.5), Node("site-1", [Neighbor("site-2", 0.5)])]
)
def test_to_dict_from_dict(obj):
    assert type(obj).from_dict(obj.to_dict()) == obj


def test_types_cross_the_codec_as_plain_dicts():
    config = sample_config()
    assert Config.from_dict(roundtrip(config.to_dict())) == config
    local = LocalConfig(neighbors=config.network.nodes[0].neighbors, extra={"iterations": 3}, out_neighbors=["site-2"])
    shareable = DXO(data_kind=DataKind.APP_DEFINED, data=local.to_dict()).to_shareable()
    received = from_shareable(roundtrip(shareable)).data
    assert LocalConfig.from_dict(received) == local
    assert LocalConfig(**received) == local
    assert received["neighbors"] == [{"id": "site-2", "weight": 0.25}, {"id": "site-3", "weight": 0.5}]


def test_the_objects_themselves_are_not_wire_types():
    with pytest.raises(UnsupportedTypeError, match="Neighbor"):
        encode({"neighbors": [Neighbor("site-2", 0.5)]})


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Neighbor(id=None), TypeError, "Neighbor.id"),
        (lambda: Neighbor(id=""), ValueError, "must not be empty"),
        (lambda: Neighbor(id=True), TypeError, "Neighbor.id"),
        (lambda: Neighbor(id="site-1", weight="0.5"), TypeError, "weight of neighbour 'site-1'"),
        (lambda: Neighbor(id="site-1", weight=float("nan")), ValueError, "finite"),
        (lambda: Node(id="site-1", neighbors="site-2"), TypeError, "neighbors of node 'site-1'"),
        (lambda: Node(id="site-1", neighbors=[3]), TypeError, r"neighbors of node 'site-1'\[0\]"),
        (lambda: Network(nodes=[Neighbor("x")]), TypeError, r"Network.nodes\[0\]"),
        (lambda: Config(network=[]), TypeError, "Config.network"),
        (lambda: Config(network=Network(), extra=[1]), TypeError, "Config.extra"),
        (lambda: LocalConfig(neighbors=[], out_neighbors="site-2"), TypeError, "out_neighbors"),
        (lambda: Neighbor.from_dict({"id": "a", "wieght": 1}), ValueError, "unknown keys"),
        (lambda: Neighbor.from_dict({"weight": 1}), ValueError, "'id' is missing"),
        (lambda: Config.from_dict({"extra": {}}), ValueError, "'network' is missing"),
    ],
)
def test_invalid_values_are_refused_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_out_neighbors_and_send_targets():
    directed = Network(
        nodes=[
            Node("site-1", [Neighbor("site-2", 0.1)]),
            Node("site-2", [Neighbor("site-3", 0.1)]),
            Node("site-3", [Neighbor("site-1", 0.1)]),
        ]
    )
    assert directed.out_neighbors("site-1") == ["site-3"]
    assert directed.out_neighbors("site-2") == ["site-1"]
    assert directed.node("site-3").neighbors[0].id == "site-1"
    with pytest.raises(KeyError, match="site-9"):
        directed.node("site-9")
    assert LocalConfig(neighbors=[Neighbor("site-2", 0.1)]).send_targets() == ["site-2"]
    assert LocalConfig(neighbors=[Neighbor("site-2", 0.1)], out_neighbors=["site-3"]).send_targets() == ["site-3"]


def test_the_controller_config_survives_fedjob_export(tmp_path):
    network, _ = generate_random_network(4, seed=3)
    config = Config(network=network, extra={"iterations": 7})
    job = FedJob(name="cfg", min_clients=4)
    job.to_server(DistOptController(config=config))
    folder = job.export_job(str(tmp_path))
    server = json.loads((tmp_path / "cfg" / "app_server" / "config" / "config_fed_server.json").read_text())
    spec = server["workflows"][0]
    assert spec["path"] == "flarelite.app_opt.p2p.controllers.dist_opt_controller.DistOptController"
    rebuilt = build_component({"path": spec["path"], "args": spec["args"]}, "test")
    assert rebuilt.config == config
    assert folder.endswith("cfg")


def test_controller_rejects_a_malformed_network():
    bad = Network(nodes=[Node("site-1", [Neighbor("site-7", 0.5)]), Node("site-2")])
    with pytest.raises(ValueError, match="neighbour 'site-7', which is not a node"):
        DistOptController(config=Config(network=bad))
    with pytest.raises(TypeError, match="config must be a Config"):
        DistOptController(config=[1])
    # a dict in Config.to_dict() form is accepted
    assert DistOptController(config=sample_config().to_dict()).config == sample_config()
