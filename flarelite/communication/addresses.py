"""Checking the addresses endpoints listen on and dial: ``host:port``, ``[ipv6]:port`` or ``unix:///path``.

gRPC reads a bare host as port 443 and takes ports it cannot use without a word; flarelite refuses both at
once, naming the address and the form it wants.
"""

from __future__ import annotations

from ..errors import ConfigError

FORMS = "host:port (e.g. 127.0.0.1:8002 or [::1]:8002) or unix:///absolute/path.sock"


def unix_path(address: str) -> str | None:
    """The socket file of a ``unix:`` address (``unix:///abs/path`` or ``unix:path``); None for TCP addresses."""
    if address.startswith("unix://"):
        return address[len("unix://") :]
    if address.startswith("unix:"):
        return address[len("unix:") :]
    return None


def tcp_host(address: str) -> str:
    """The host of a ``host:port`` or ``[ipv6]:port`` address, without brackets ("" for a Unix socket)."""
    if unix_path(address) is not None:
        return ""
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def check_address(address: object, what: str, *, listening: bool) -> str:
    """Return ``address`` when it names a Unix socket or a host and a port (0, pick one, only to listen).

    Raises:
        ConfigError: naming ``what`` (e.g. "the server address"), the address and the expected form.
    """
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"{what} must be {FORMS}, got {address!r}")
    path = unix_path(address)
    if path is not None:
        if not path:
            raise ConfigError(f"{what} {address!r} names no socket file; write {FORMS}")
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or host.endswith(":") and not host.startswith("["):
        raise ConfigError(f"{what} {address!r} has no port; write {FORMS}")
    if host.startswith("[") != host.endswith("]") or host in ("[]",):
        raise ConfigError(f"{what} {address!r}: an IPv6 host goes in brackets, e.g. [::1]:8002")
    if not port.isdigit():
        raise ConfigError(f"{what} {address!r}: the port {port!r} is not a number; write {FORMS}")
    number = int(port)
    if number > 65535 or (number == 0 and not listening):
        allowed = "0-65535, 0 picking a free port" if listening else "1-65535"
        raise ConfigError(f"{what} {address!r}: port {number} is out of range ({allowed})")
    return address
