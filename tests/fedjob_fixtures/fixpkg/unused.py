"""Imported by nobody: must not be copied."""
