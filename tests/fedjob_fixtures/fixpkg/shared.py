"""Imported by fixpkg.sub.leaf with a two-dot relative import."""

VALUE = 3
