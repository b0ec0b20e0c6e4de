"""flarelite.app_opt.p2p.utils: topology generators, mixing-weight checks, the consensus limit."""

from __future__ import annotations

import numpy as np
import pytest

from flarelite.app_opt.p2p.types import Neighbor, Network, Node
from flarelite.app_opt.p2p.utils import (
    check_mixing_matrix,
    doubly_stochastic_adjacency,
    generate_fully_connected_network,
    generate_random_network,
    generate_ring_network,
    get_matrix_steady_state,
    network_from_matrix,
    network_to_matrix,
    second_largest_eigenvalue,
    validate_network,
)


def neighbours(network: Network) -> dict:
    return {n.id: sorted(nb.id for nb in n.neighbors) for n in network.nodes}


def connected(matrix: np.ndarray) -> bool:
    reach = (matrix > 0).astype(int) + np.eye(len(matrix), dtype=int)
    return bool(np.all(np.linalg.matrix_power(reach, len(matrix)) > 0))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10])
def test_random_network_is_connected_with_metropolis_hastings_weights(n):
    network, w = generate_random_network(n, seed=11)
    assert [node.id for node in network.nodes] == [f"site-{i}" for i in range(1, n + 1)]
    assert isinstance(w, np.ndarray) and w.shape == (n, n)
    check_mixing_matrix(w, symmetric=True, doubly_stochastic=True)
    assert connected(w)
    ids, again = network_to_matrix(network)
    np.testing.assert_allclose(again, w)
    for node in network.nodes:  # MH: 1 / (1 + max degree) on each edge
        for nb in node.neighbors:
            deg_i, deg_j = len(node.neighbors), len(network.node(nb.id).neighbors)
            assert nb.weight == pytest.approx(1 / (1 + max(deg_i, deg_j)))
    assert np.allclose(validate_network(network, symmetric=True), w)


def test_random_network_seed_makes_it_reproducible():
    a, wa = generate_random_network(8, seed=5)
    b, wb = generate_random_network(8, seed=5)
    assert a == b and np.array_equal(wa, wb)
    graphs = {tuple(map(tuple, generate_random_network(8, seed=s)[1] > 0)) for s in range(6)}
    assert len(graphs) > 1  # different seeds, different graphs
    sparse, _ = generate_random_network(6, seed=1, connection_probability=0.05)
    assert connected(network_to_matrix(sparse)[1])  # drawn again until connected
    dense, w = generate_random_network(5, seed=1, connection_probability=1.0)
    assert all(len(node.neighbors) == 4 for node in dense.nodes) and np.allclose(w, 0.2)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_generators_refuse_bad_counts(bad):
    for generate in (generate_random_network, generate_ring_network, generate_fully_connected_network):
        with pytest.raises(ValueError, match="num_clients must be a positive int"):
            generate(bad)
    with pytest.raises(ValueError, match="connection_probability"):
        generate_random_network(3, connection_probability=0)


def test_ring_networks():
    ring, w = generate_ring_network(5)
    assert neighbours(ring)["site-1"] == ["site-2", "site-5"]
    np.testing.assert_allclose(w.sum(axis=0), 1)
    check_mixing_matrix(w, symmetric=True)
    assert np.allclose(np.diag(w), 1 / 3)

    directed, wd = generate_ring_network(4, directed=True)
    assert neighbours(directed) == {
        "site-1": ["site-2"],
        "site-2": ["site-3"],
        "site-3": ["site-4"],
        "site-4": ["site-1"],
    }
    assert directed.out_neighbors("site-1") == ["site-4"]
    check_mixing_matrix(wd, doubly_stochastic=True)
    with pytest.raises(ValueError, match="not symmetric"):
        check_mixing_matrix(wd, symmetric=True)
    assert neighbours(generate_ring_network(2)[0]) == {"site-1": ["site-2"], "site-2": ["site-1"]}
    assert neighbours(generate_ring_network(1)[0]) == {"site-1": []}


def test_fully_connected_network_mixes_in_one_step():
    network, w = generate_fully_connected_network(4)
    assert all(len(node.neighbors) == 3 for node in network.nodes)
    x0 = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(w @ x0, np.full(4, 3.0))
    assert second_largest_eigenvalue(w) == pytest.approx(0.0, abs=1e-12)


def test_metropolis_hastings_from_adjacency():
    path = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    w = doubly_stochastic_adjacency(path)
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    with pytest.raises(ValueError, match="symmetric"):
        doubly_stochastic_adjacency([[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="only 0 and 1"):
        doubly_stochastic_adjacency([[0, 2], [2, 0]])
    with pytest.raises(ValueError, match="square"):
        doubly_stochastic_adjacency([[0, 1, 0]])


@pytest.mark.parametrize(
    "matrix, kwargs, match",
    [
        ([[0.5, 0.5], [0.2, 0.7]], {}, "row 1 sum to 0.9"),
        ([[1.2, -0.2], [0.5, 0.5]], {}, r"\[0, 1\] is negative"),
        ([[0.5, 0.5], [np.nan, 0.5]], {}, "not a finite number"),
        ([[0.5, 0.5], [0.0, 1.0]], {"doubly_stochastic": True}, "column 0 sum to 0.5"),
        ([[0.5, 0.5], [0.0, 1.0]], {"symmetric": True}, "not symmetric"),
        ([[1, 0, 0]], {}, "square"),
        ([["a"]], {}, "matrix of numbers"),
    ],
)
def test_check_mixing_matrix_says_what_is_wrong(matrix, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_mixing_matrix(matrix, **kwargs)


def test_check_mixing_matrix_names_sites():
    with pytest.raises(ValueError, match="row 'site-2'"):
        check_mixing_matrix([[1.0, 0.0], [0.3, 0.3]], names=["site-1", "site-2"])
    torch = pytest.importorskip("torch")
    check_mixing_matrix(torch.eye(3))  # torch tensors are accepted too


@pytest.mark.parametrize(
    "nodes, match",
    [
        ([], "no nodes"),
        ([Node(None)], "every node needs an id"),
        ([Node("site-1"), Node("site-1")], "repeated"),
        ([Node("site-1", [Neighbor("site-1", 0.5)])], "lists itself"),
        ([Node("site-1", [Neighbor("site-2", 0.5)])], "'site-2', which is not a node"),
        ([Node("site-1", [Neighbor("site-2", 0.2), Neighbor("site-2", 0.2)]), Node("site-2")], "twice"),
        ([Node("site-1", [Neighbor("site-2")]), Node("site-2")], "'site-2' has no weight"),
        (
            [Node("site-1", [Neighbor("site-2", 0.8), Neighbor("site-3", 0.7)]), Node("site-2"), Node("site-3")],
            "negative",
        ),
    ],
)
def test_validate_network_says_what_is_wrong(nodes, match):
    with pytest.raises(ValueError, match=match):
        validate_network(Network(nodes=nodes))


def test_validate_network_without_weights():
    unweighted = Network(nodes=[Node("site-1", [Neighbor("site-2")]), Node("site-2", [Neighbor("site-1")])])
    assert validate_network(unweighted, require_weights=False) is None
    exercise = Network(  # the tutorial's directed ring: valid rows, not symmetric
        nodes=[
            Node("site-1", [Neighbor("site-2", 0.1)]),
            Node("site-2", [Neighbor("site-3", 0.1)]),
            Node("site-3", [Neighbor("site-1", 0.1)]),
        ]
    )
    w = validate_network(exercise, doubly_stochastic=True)
    assert w[0, 0] == pytest.approx(0.9) and w[0, 1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"not symmetric: \['site-1', 'site-2'\] = 0.1 but \['site-2', 'site-1'\] = 0"):
        validate_network(exercise, symmetric=True)


def test_network_from_matrix_and_steady_state():
    w = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    network = network_from_matrix(w, names=["a", "b", "c"])
    assert neighbours(network) == {"a": ["b"], "b": ["c"], "c": ["a"]}
    np.testing.assert_allclose(get_matrix_steady_state(w), [1 / 3] * 3)
    row_only = np.array([[0.5, 0.5], [0.1, 0.9]])  # rows sum to 1, columns do not: a weighted average
    pi = get_matrix_steady_state(row_only)
    x0 = np.array([1.0, 0.0])
    x = x0
    for _ in range(500):
        x = row_only @ x
    np.testing.assert_allclose(x, pi @ x0)
    with pytest.raises(ValueError, match="distinct names"):
        network_from_matrix(w, names=["a", "a", "b"])
