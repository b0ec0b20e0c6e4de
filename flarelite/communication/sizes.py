"""Message size limits: the default, and ``max_message_size`` values from users (ints, or text like ``"64M"``).

Every entry point (``FedJob.simulator_run``, ``run_simulation``, ``launch.run_server``/``run_client``, the
``--max-message-size`` option of the CLI) goes through ``max_message_size`` here, so one spelling and one error
serve them all.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

DEFAULT_MAX_MESSAGE_SIZE = 2 << 30  # 2 GiB: a large model's weights in one message; raise it for more
_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*([KMGT]?)(?:I?B)?\s*\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"1048576"``, ``"512K"``, ``"64M"``, ``"4G"`` (binary units: K = 1024; ``"64MiB"`` too).

    Raises:
        ConfigError: not a whole number of bytes, optionally with K, M, G or T.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(
            f"max message size {text!r} is not a size: give bytes (e.g. 1048576) or a number with K, M, G or T "
            "(binary units: 512K, 64M, 4G)"
        )
    return int(match.group(1)) << _UNITS[match.group(2).upper()]


def max_message_size(value: int | str | None) -> int:
    """The ``max_message_size`` a user gave (bytes as an int, or text for ``parse_size``; None: the default).

    Raises:
        ConfigError: not a positive whole number of bytes.
    """
    if value is None:
        return DEFAULT_MAX_MESSAGE_SIZE
    if isinstance(value, str):
        value = parse_size(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"max_message_size must be a number of bytes (int) or a size like '64M', got {value!r}")
    if value < 1:
        raise ConfigError(f"max_message_size must be at least 1 byte, got {value}")
    return value
