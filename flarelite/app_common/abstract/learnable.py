"""Learnable: what a persistor loads and saves (a dict)."""

from __future__ import annotations


class Learnable(dict):
    """The base of learnable objects (a model and its meta); a dict."""
