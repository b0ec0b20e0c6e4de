"""Shareable generators; the package exports FullModelShareableGenerator, as NVFlare's does."""

from .full_model_shareable_generator import FullModelShareableGenerator

__all__ = ["FullModelShareableGenerator"]
