"""Constants of the numpy pieces."""

from __future__ import annotations


class NPConstants:
    """Names used by the numpy persistor, locator and example scripts."""

    NUMPY_KEY = "numpy_key"
