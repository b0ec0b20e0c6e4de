"""Utilities of fuel."""
