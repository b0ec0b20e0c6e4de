"""A leaf module imported by p2p_modules."""

from ..shared import VALUE  # noqa: F401

LEAF = 1
