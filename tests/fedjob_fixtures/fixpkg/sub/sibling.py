"""Imported relatively by fixpkg.sub."""

SIBLING = 2
