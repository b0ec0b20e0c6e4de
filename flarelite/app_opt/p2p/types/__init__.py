"""The network of a peer-to-peer algorithm: Neighbor, Node, Network, Config (server side), LocalConfig (a site's).

A node's ``neighbors`` are the sites whose values it *receives* and mixes into its own (its in-neighbours),
each with the ``weight`` the node gives to that neighbour's value; the node keeps ``1 - sum(weights)`` for
its own value. In an undirected network a node also sends to the same sites; in a directed one it sends to
the nodes that list it (its out-neighbours, ``Network.out_neighbors``).

The objects travel as plain dicts (``to_dict()`` / ``from_dict()``), so any site can read them with the
codec's built-in types; the constructors also accept those dicts where they take objects, as NVFlare's do
(``LocalConfig(**data)`` works).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Neighbor", "Node", "Network", "Config", "LocalConfig"]


def _check_id(value: Any, what: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be a site name (str) or an int, got {type(value).__name__} {value!r}")
    if isinstance(value, str) and not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _check_weight(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number or None, got {type(value).__name__} {value!r}")
    weight = float(value)
    if not math.isfinite(weight):
        raise ValueError(f"{what} must be finite, got {weight}")
    return weight


def _check_extra(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{what} must be a dict with str keys, got {type(value).__name__}")
    return dict(value)


def _neighbor_list(value: Any, what: str) -> list[Neighbor]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{what} must be a list of Neighbor (or dicts with 'id' and 'weight'), got {type(value).__name__}"
        )
    return [
        Neighbor.from_dict(n) if isinstance(n, dict) else _expect(n, Neighbor, f"{what}[{i}]")
        for i, n in enumerate(value)
    ]


def _expect(value: Any, cls: type, what: str) -> Any:
    if not isinstance(value, cls):
        raise TypeError(f"{what} must be a {cls.__name__} (or its dict form), got {type(value).__name__}")
    return value


def _from_dict(cls: type, data: Any, keys: set[str]) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    unknown = sorted(set(data) - keys)
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown keys {unknown}; expected some of {sorted(keys)}")
    return data


@dataclass
class Neighbor:
    """A neighbour of a node: its site name and the weight the node gives to its value."""

    id: int | str
    weight: float | None = None

    def __post_init__(self) -> None:
        self.id = _check_id(self.id, "Neighbor.id")
        self.weight = _check_weight(self.weight, f"weight of neighbour {self.id!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"id", "weight"}``."""
        return {"id": self.id, "weight": self.weight}

    @classmethod
    def from_dict(cls, data: dict) -> Neighbor:
        """Build a Neighbor from ``to_dict()``'s form."""
        data = _from_dict(cls, data, {"id", "weight"})
        if "id" not in data:
            raise ValueError(f"Neighbor.from_dict: 'id' is missing in {data!r}")
        return cls(id=data["id"], weight=data.get("weight"))


@dataclass
class Node:
    """A site of the network and the neighbours whose values it receives."""

    id: int | str | None = None
    neighbors: list[Neighbor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.id is not None:
            self.id = _check_id(self.id, "Node.id")
        self.neighbors = _neighbor_list(self.neighbors, f"neighbors of node {self.id!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"id", "neighbors": [neighbor dicts]}``."""
        return {"id": self.id, "neighbors": [n.to_dict() for n in self.neighbors]}

    @classmethod
    def from_dict(cls, data: dict) -> Node:
        """Build a Node from ``to_dict()``'s form."""
        data = _from_dict(cls, data, {"id", "neighbors"})
        return cls(id=data.get("id"), neighbors=data.get("neighbors") or [])


@dataclass
class Network:
    """The nodes of a network (the topology a peer-to-peer algorithm runs on)."""

    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, (list, tuple)):
            raise TypeError(f"Network.nodes must be a list of Node (or dicts), got {type(self.nodes).__name__}")
        self.nodes = [
            Node.from_dict(n) if isinstance(n, dict) else _expect(n, Node, f"Network.nodes[{i}]")
            for i, n in enumerate(self.nodes)
        ]

    def node(self, node_id: int | str) -> Node:
        """Return the node named ``node_id``; KeyError if there is none."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id!r} in the network (nodes: {[n.id for n in self.nodes]})")

    def out_neighbors(self, node_id: int | str | None) -> list[int | str]:
        """Return the ids of the nodes that list ``node_id`` as a neighbour (the sites it sends its values to)."""
        return [n.id for n in self.nodes if n.id != node_id and any(nb.id == node_id for nb in n.neighbors)]  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"nodes": [node dicts]}``."""
        return {"nodes": [n.to_dict() for n in self.nodes]}

    @classmethod
    def from_dict(cls, data: dict) -> Network:
        """Build a Network from ``to_dict()``'s form."""
        data = _from_dict(cls, data, {"nodes"})
        return cls(nodes=data.get("nodes") or [])


@dataclass
class Config:
    """What the server's DistOptController gets: the network and the algorithm's parameters (``extra``).

    ``extra`` holds plain values such as ``{"iterations": 100, "stepsize": 0.1}``; it is sent to every site
    with the ``run_algorithm`` task.
    """

    network: Network
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.network, dict):
            self.network = Network.from_dict(self.network)
        _expect(self.network, Network, "Config.network")
        self.extra = _check_extra(self.extra, "Config.extra")

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"network": {...}, "extra": {...}}``."""
        return {"network": self.network.to_dict(), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """Build a Config from ``to_dict()``'s form."""
        data = _from_dict(cls, data, {"network", "extra"})
        if "network" not in data:
            raise ValueError("Config.from_dict: 'network' is missing")
        return cls(network=data["network"], extra=data.get("extra") or {})


@dataclass
class LocalConfig:
    """What one site gets in the ``config`` task: its in-neighbours, the parameters, and whom it sends to.

    ``out_neighbors`` lists the sites this one sends its values to; None means "the same sites as
    ``neighbors``" (an undirected network). DistOptController always fills it in.
    """

    neighbors: list[Neighbor]
    extra: dict = field(default_factory=dict)
    out_neighbors: list[int | str] | None = None

    def __post_init__(self) -> None:
        self.neighbors = _neighbor_list(self.neighbors, "LocalConfig.neighbors")
        self.extra = _check_extra(self.extra, "LocalConfig.extra")
        if self.out_neighbors is not None:
            if not isinstance(self.out_neighbors, (list, tuple)):
                raise TypeError(
                    "LocalConfig.out_neighbors must be a list of site names or None, "
                    f"got {type(self.out_neighbors).__name__}"
                )
            self.out_neighbors = [_check_id(i, "LocalConfig.out_neighbors entry") for i in self.out_neighbors]

    def send_targets(self) -> list[int | str]:
        """Return the sites this one sends its values to (``out_neighbors``, else its neighbours)."""
        if self.out_neighbors is not None:
            return list(self.out_neighbors)
        return [n.id for n in self.neighbors]

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"neighbors": [...], "extra": {...}, "out_neighbors": [...] or None}``."""
        return {
            "neighbors": [n.to_dict() for n in self.neighbors],
            "extra": dict(self.extra),
            "out_neighbors": None if self.out_neighbors is None else list(self.out_neighbors),
        }

    @classmethod
    def from_dict(cls, data: dict) -> LocalConfig:
        """Build a LocalConfig from ``to_dict()``'s form (``extra`` and ``out_neighbors`` may be left out)."""
        data = _from_dict(cls, data, {"neighbors", "extra", "out_neighbors"})
        return cls(
            neighbors=data.get("neighbors") or [],
            extra=data.get("extra") or {},
            out_neighbors=data.get("out_neighbors"),
        )
