"""The ``data_plane`` option: its values, and the one check every entry point uses (the gRPC endpoint,
``run_simulation``; the CLI's ``--data-plane`` offers the same choices).

``"auto"``: on one machine (Unix sockets) the buffers of large frames take a data channel beside the gRPC stream
(``communication/dataplane``); ``"grpc"``: gRPC only.
"""

from __future__ import annotations

from ..errors import ConfigError

DATA_PLANES = ("auto", "grpc")


def check_data_plane(value: object) -> str:
    """Return ``value`` when it is one of DATA_PLANES.

    Raises:
        ConfigError: naming the choices and what each means.
    """
    if value not in DATA_PLANES:
        raise ConfigError(
            f"data_plane must be one of {', '.join(DATA_PLANES)} (auto: on one machine, the buffers of large frames "
            "between a site and its server, and between sites on a direct connection, take a data channel beside "
            f"gRPC; grpc: gRPC only), got {value!r}"
        )
    return value  # type: ignore[return-value]
