"""Server-side workflows for peer-to-peer algorithms."""

from __future__ import annotations

from .dist_opt_controller import DistOptController

__all__ = ["DistOptController"]
