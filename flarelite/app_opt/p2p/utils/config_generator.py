"""Networks to run peer-to-peer algorithms on: random connected graphs, rings, fully connected graphs.

Every generator names the sites ``site-1 .. site-N`` (the simulator's names) and returns
``(network, W)``, where ``W`` is the mixing matrix as a numpy array (``W[i, j]``: the weight site i+1 gives
to site j+1's value; see ``topology``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import Neighbor, Network, Node
from .topology import check_mixing_matrix, doubly_stochastic_adjacency

__all__ = [
    "generate_random_network",
    "generate_ring_network",
    "generate_fully_connected_network",
    "network_from_matrix",
]


def _check_count(num_clients: Any) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
    return int(num_clients)


def _site_names(n: int) -> list[str]:
    return [f"site-{i + 1}" for i in range(n)]


def network_from_matrix(matrix: Any, names: list[str] | None = None, *, atol: float = 1e-6) -> Network:
    """Build the Network of a mixing matrix: node i's neighbours are the j != i with ``W[i, j] > 0``.

    ``names`` default to ``site-1 .. site-N``.

    Raises:
        ValueError: the matrix is not a valid mixing matrix (see ``check_mixing_matrix``) or names don't fit.
    """
    w = check_mixing_matrix(matrix, atol=atol)
    n = w.shape[0]
    names = list(names) if names is not None else _site_names(n)
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"need {n} distinct names for a {n}x{n} matrix, got {names}")
    nodes = []
    for i in range(n):
        neighbors = [Neighbor(id=names[j], weight=float(w[i, j])) for j in range(n) if j != i and w[i, j] > 0]
        nodes.append(Node(id=names[i], neighbors=neighbors))
    return Network(nodes=nodes)


def _is_connected(adjacency: np.ndarray) -> bool:
    n = adjacency.shape[0]
    seen = {0}
    frontier = [0]
    while frontier:
        i = frontier.pop()
        for j in np.nonzero(adjacency[i])[0]:
            if int(j) not in seen:
                seen.add(int(j))
                frontier.append(int(j))
    return len(seen) == n


def generate_random_network(
    num_clients: int, seed: int | None = None, connection_probability: float = 0.3
) -> tuple[Network, np.ndarray]:
    """Return a random connected undirected network and its Metropolis-Hastings mixing matrix.

    Each pair of sites is linked with ``connection_probability`` (an Erdos-Renyi graph), drawn again until
    the graph is connected. The weights are symmetric and doubly stochastic, so consensus converges to the
    plain average. ``seed`` makes the network reproducible.

    Raises:
        ValueError: ``num_clients`` < 1 or ``connection_probability`` not in (0, 1].
    """
    n = _check_count(num_clients)
    if not 0 < connection_probability <= 1:
        raise ValueError(f"connection_probability must be in (0, 1], got {connection_probability!r}")
    rng = np.random.default_rng(seed)
    while True:
        upper = np.triu(rng.random((n, n)) < connection_probability, k=1)
        adjacency = (upper | upper.T).astype(np.float64)
        if _is_connected(adjacency):
            break
    w = doubly_stochastic_adjacency(adjacency)
    return network_from_matrix(w), w


def generate_ring_network(num_clients: int, directed: bool = False) -> tuple[Network, np.ndarray]:
    """Return a ring of ``num_clients`` sites and its mixing matrix.

    Undirected: each site mixes with both sides (Metropolis-Hastings weights, 1/3 each). Directed: site i
    receives only from site i+1 (the last from the first), each keeping half of its own value; the matrix is
    still doubly stochastic.

    Raises:
        ValueError: ``num_clients`` < 1.
    """
    n = _check_count(num_clients)
    if n == 1:
        return network_from_matrix(np.ones((1, 1))), np.ones((1, 1))
    if directed:
        w = np.eye(n) * 0.5
        for i in range(n):
            w[i, (i + 1) % n] += 0.5
    else:
        adjacency = np.zeros((n, n))
        for i in range(n):
            j = (i + 1) % n
            adjacency[i, j] = adjacency[j, i] = 1.0
        w = doubly_stochastic_adjacency(adjacency)
    return network_from_matrix(w), w


def generate_fully_connected_network(num_clients: int) -> tuple[Network, np.ndarray]:
    """Return a network where every site mixes with every other one (weights 1/N): consensus in one step.

    Raises:
        ValueError: ``num_clients`` < 1.
    """
    n = _check_count(num_clients)
    w = np.full((n, n), 1.0 / n)
    return network_from_matrix(w), w
