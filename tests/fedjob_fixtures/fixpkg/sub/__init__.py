"""A subpackage; imports a sibling module relatively."""

from . import sibling  # noqa: F401
