"""A local helper module imported by p2p_modules (FedJob must copy it to custom/ too)."""

HELLO_TASK = "hello"


def greeting(site: str) -> str:
    """Return the greeting a site logs."""
    return f"hello from {site}"
