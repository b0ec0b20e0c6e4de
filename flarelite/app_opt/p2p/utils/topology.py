"""Mixing matrices: Metropolis-Hastings weights, validity checks, a network's matrix, the consensus limit.

Convention: ``W[i, j]`` is the weight site ``i`` gives to site ``j``'s value, so one consensus step is
``x_i <- sum_j W[i, j] * x_j`` and every row of ``W`` sums to 1. ``W[i, i]`` is what a site keeps of its own
value. For the symmetric matrices the generators make this is also NVFlare's (column) convention.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import Network

__all__ = [
    "doubly_stochastic_adjacency",
    "check_mixing_matrix",
    "network_to_matrix",
    "validate_network",
    "get_matrix_steady_state",
    "second_largest_eigenvalue",
]


def _as_matrix(matrix: Any, what: str = "mixing matrix") -> np.ndarray:
    if hasattr(matrix, "detach"):  # a torch tensor
        matrix = matrix.detach().cpu().numpy()
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a square matrix of numbers: {exc}") from exc
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{what} must be a square matrix, got shape {m.shape}")
    return m


def doubly_stochastic_adjacency(adjacency: Any) -> np.ndarray:
    """Return Metropolis-Hastings weights for an undirected graph given by its 0/1 adjacency matrix.

    ``W[i, j] = 1 / (1 + max(deg_i, deg_j))`` for each edge and ``W[i, i] = 1 - sum_j W[i, j]``: a symmetric,
    doubly stochastic matrix, so consensus converges to the plain average of the initial values.

    Raises:
        ValueError: the matrix is not square, not symmetric, or has entries other than 0 and 1 off the diagonal.
    """
    a = _as_matrix(adjacency, "adjacency matrix")
    a = a.copy()
    np.fill_diagonal(a, 0.0)
    if not np.all((a == 0.0) | (a == 1.0)):
        raise ValueError("adjacency matrix must hold only 0 and 1 off the diagonal")
    if not np.array_equal(a, a.T):
        raise ValueError("adjacency matrix must be symmetric (an undirected graph) for Metropolis-Hastings weights")
    degree = a.sum(axis=1)
    n = a.shape[0]
    w = np.zeros((n, n))
    for i in range(n):
        for j in np.nonzero(a[i])[0]:
            w[i, j] = 1.0 / (1.0 + max(degree[i], degree[j]))
        w[i, i] = 1.0 - w[i].sum()
    return w


def _label(names: list | None, i: int) -> str:
    return repr(names[i]) if names is not None else str(i)


def check_mixing_matrix(
    matrix: Any,
    *,
    symmetric: bool = False,
    doubly_stochastic: bool = False,
    atol: float = 1e-6,
    names: list | None = None,
) -> np.ndarray:
    """Check mixing weights and return them as a float64 array.

    Always: finite, non-negative, every row sums to 1. ``doubly_stochastic``: every column sums to 1 too
    (consensus then converges to the plain average, and DGD / gradient tracking to the minimiser of the
    sum of the local losses). ``symmetric``: ``W == W.T`` (mutual neighbours with equal weights).

    Raises:
        ValueError: naming the offending row, column or pair (by ``names`` when given) and the values.
    """
    w = _as_matrix(matrix)
    if names is not None and len(names) != w.shape[0]:
        raise ValueError(f"{len(names)} names for a {w.shape[0]}x{w.shape[0]} mixing matrix")
    if not np.all(np.isfinite(w)):
        i, j = np.argwhere(~np.isfinite(w))[0]
        raise ValueError(f"mixing weight [{_label(names, i)}, {_label(names, j)}] is {w[i, j]}, not a finite number")
    if np.any(w < -atol):
        i, j = np.argwhere(w < -atol)[0]
        raise ValueError(
            f"mixing weight [{_label(names, i)}, {_label(names, j)}] is negative ({w[i, j]:.6g}); weights must be >= 0 "
            "(a site whose neighbour weights sum to more than 1 keeps a negative weight for itself)"
        )
    rows = w.sum(axis=1)
    bad = np.nonzero(np.abs(rows - 1.0) > atol)[0]
    if bad.size:
        i = bad[0]
        raise ValueError(f"mixing weights of row {_label(names, i)} sum to {rows[i]:.9g}, not 1 (rows must sum to 1)")
    if doubly_stochastic:
        cols = w.sum(axis=0)
        bad = np.nonzero(np.abs(cols - 1.0) > atol)[0]
        if bad.size:
            j = bad[0]
            raise ValueError(
                f"mixing weights of column {_label(names, j)} sum to {cols[j]:.9g}, not 1: the matrix is not doubly "
                "stochastic, so the sites would not converge to the plain average (use Metropolis-Hastings weights)"
            )
    if symmetric:
        diff = np.abs(w - w.T)
        if np.any(diff > atol):
            i, j = np.argwhere(diff > atol)[0]
            raise ValueError(
                f"mixing weights are not symmetric: [{_label(names, i)}, {_label(names, j)}] = {w[i, j]:.6g} but "
                f"[{_label(names, j)}, {_label(names, i)}] = {w[j, i]:.6g}"
            )
    return w


def _check_structure(network: Network) -> list:
    if not isinstance(network, Network):
        raise TypeError(f"expected a Network, got {type(network).__name__}")
    ids = [n.id for n in network.nodes]
    if not ids:
        raise ValueError("the network has no nodes")
    if any(i is None for i in ids):
        raise ValueError(f"every node needs an id (a site name); got {ids}")
    dup = sorted({str(i) for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"node ids must be unique; repeated: {dup}")
    known = set(ids)
    for node in network.nodes:
        seen = set()
        for nb in node.neighbors:
            if nb.id == node.id:
                raise ValueError(
                    f"node {node.id!r} lists itself as a neighbour; its own weight is 1 - sum(neighbour weights)"
                )
            if nb.id not in known:
                raise ValueError(f"node {node.id!r} has neighbour {nb.id!r}, which is not a node of the network {ids}")
            if nb.id in seen:
                raise ValueError(f"node {node.id!r} lists neighbour {nb.id!r} twice")
            seen.add(nb.id)
    return ids


def network_to_matrix(network: Network) -> tuple[list, np.ndarray]:
    """Return ``(node ids, W)``: ``W[i, j]`` is node i's weight for neighbour j, ``W[i, i] = 1 - sum``.

    Raises:
        ValueError: the network is malformed or a neighbour has no weight.
    """
    ids = _check_structure(network)
    index = {node_id: k for k, node_id in enumerate(ids)}
    w = np.zeros((len(ids), len(ids)))
    for node in network.nodes:
        i = index[node.id]
        for nb in node.neighbors:
            if nb.weight is None:
                raise ValueError(
                    f"node {node.id!r}: neighbour {nb.id!r} has no weight; set Neighbor(id, weight=...) or build the "
                    "network with a generator from flarelite.app_opt.p2p.utils"
                )
            w[i, index[nb.id]] = nb.weight
        w[i, i] = 1.0 - w[i].sum()
    return ids, w


def validate_network(
    network: Network,
    *,
    require_weights: bool = True,
    symmetric: bool = False,
    doubly_stochastic: bool = False,
    atol: float = 1e-6,
) -> np.ndarray | None:
    """Check a network: unique node ids, known neighbours, no self-loops, and valid mixing weights.

    Returns the mixing matrix (see ``network_to_matrix``), or None when ``require_weights`` is False and some
    weights are missing. ``symmetric`` and ``doubly_stochastic`` are passed to ``check_mixing_matrix``.

    Raises:
        ValueError: saying which node, neighbour or weight is wrong.
    """
    ids = _check_structure(network)
    if not require_weights and any(nb.weight is None for n in network.nodes for nb in n.neighbors):
        return None
    _, w = network_to_matrix(network)
    return check_mixing_matrix(w, symmetric=symmetric, doubly_stochastic=doubly_stochastic, atol=atol, names=ids)


def get_matrix_steady_state(matrix: Any) -> np.ndarray:
    """Return the consensus limit's weights ``pi`` (``pi @ W = pi``, ``sum(pi) = 1``) of a row-stochastic ``W``.

    Consensus from initial values ``x0`` converges to ``pi @ x0``; for a doubly stochastic ``W``, ``pi`` is
    uniform (the plain average).
    """
    w = _as_matrix(matrix)
    values, vectors = np.linalg.eig(w.T)
    k = int(np.argmin(np.abs(values - 1.0)))
    pi = np.real(vectors[:, k])
    return pi / pi.sum()


def second_largest_eigenvalue(matrix: Any) -> float:
    """Return the second largest eigenvalue modulus of ``W``: consensus errors shrink about this much per step."""
    w = _as_matrix(matrix)
    moduli = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(moduli[1]) if moduli.size > 1 else 0.0
