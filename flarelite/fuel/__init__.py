"""NVFlare's fuel at its paths: the few utilities the high-level API names (``fuel.utils.constants``)."""
