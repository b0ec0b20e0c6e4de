"""The ``data_plane`` option: its values, and the one check every entry point uses (the gRPC endpoint,
``run_simulation``; the CLI's ``--data-plane`` offers the same choices).

``"auto"``: on one machine (Unix sockets) the buffers of large frames take a data channel beside the gRPC stream
(``communication/dataplane``), and across machines (TCP) under mtls, a TLS channel with the project's
certificates; ``"tcp"``: also over TCP in tls mode (TLS, the server's certificate checked) and in clear mode (plain
TCP, as the gRPC connection is); ``"grpc"``: gRPC only.
"""

from __future__ import annotations

from ..errors import ConfigError

DATA_PLANES = ("auto", "tcp", "grpc")


def check_data_plane(value: object) -> str:
    """Return ``value`` when it is one of DATA_PLANES.

    Raises:
        ConfigError: naming the choices and what each means.
    """
    if value not in DATA_PLANES:
        raise ConfigError(
            f"data_plane must be one of {', '.join(DATA_PLANES)} (auto: the buffers of large frames between a site "
            "and its server, and between sites on a direct connection, take a data channel beside gRPC on one "
            "machine, and across machines under mtls; tcp: across machines in every mode; grpc: gRPC only), "
            f"got {value!r}"
        )
    return value  # type: ignore[return-value]
