"""Topologies and mixing weights for peer-to-peer algorithms (numpy only; torch helpers in ``metrics``/``utils``)."""

from __future__ import annotations

from .config_generator import (
    generate_fully_connected_network,
    generate_random_network,
    generate_ring_network,
    network_from_matrix,
)
from .topology import (
    check_mixing_matrix,
    doubly_stochastic_adjacency,
    get_matrix_steady_state,
    network_to_matrix,
    second_largest_eigenvalue,
    validate_network,
)

__all__ = [
    "generate_random_network",
    "generate_ring_network",
    "generate_fully_connected_network",
    "network_from_matrix",
    "check_mixing_matrix",
    "doubly_stochastic_adjacency",
    "get_matrix_steady_state",
    "network_to_matrix",
    "second_largest_eigenvalue",
    "validate_network",
]
