"""Runs a whole job on one machine."""

from .runner import run_simulation

__all__ = ["run_simulation"]
