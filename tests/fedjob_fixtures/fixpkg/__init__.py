"""A local package for the custom/ tests."""
