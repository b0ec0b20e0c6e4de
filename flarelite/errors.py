"""flarelite's exception tree. Library errors are mapped here at the edge (``raise X(...) from exc``).

::

    FlareliteError
    ├── ConfigError                 a job, component or argument that cannot be used (ValueError too)
    │   └── ComponentBuildError     a component that cannot be imported or constructed
    ├── CodecError                  a value that cannot be encoded or bytes that cannot be decoded
    │   ├── UnsupportedTypeError    a type outside the allow-list (TypeError too); names type and key path
    │   └── DecodeError             malformed or untrusted encoded data (ValueError too)
    ├── TransportError              moving frames between endpoints failed
    │   ├── ConnectError            the endpoint is unknown or cannot be reached
    │   ├── TransportTimeout        no progress within the allowed time
    │   ├── TransportClosed         the protocol (or the peer) has been stopped
    │   └── ProtocolError           a frame that breaks the wire rules
    └── RunFailedError              a job run that ended in failure (RuntimeError too)

    RunInterrupted (a SystemExit)   SIGTERM or SIGINT stopped a run; uncaught, it ends the program quietly
                                    with status 128 + the signal's number (no `except Exception` swallows it)
"""

from __future__ import annotations


class FlareliteError(Exception):
    """Base of every error flarelite raises on purpose."""


class ConfigError(FlareliteError, ValueError):
    """A job, component or option that cannot be used as given."""


class ComponentBuildError(ConfigError):
    """A component that cannot be imported or constructed from its recorded path and args."""


class CodecError(FlareliteError):
    """A value that cannot be encoded, or data that cannot be decoded."""


class UnsupportedTypeError(CodecError, TypeError):
    """A value of a type the codec does not allow; the message names the type and its key path."""


class DecodeError(CodecError, ValueError):
    """Encoded data that is malformed, truncated or refers to types the receiver does not allow."""


class TransportError(FlareliteError):
    """Moving a frame between endpoints failed."""


class ConnectError(TransportError):
    """The target endpoint is unknown or cannot be reached."""


class TransportTimeout(TransportError):
    """No progress was made within the allowed time."""


class TransportClosed(TransportError):
    """The protocol (or the peer's endpoint) has been stopped."""


class ProtocolError(TransportError):
    """A frame that breaks the wire rules (bad kind, size, or ordering)."""


class RunFailedError(FlareliteError, RuntimeError):
    """A job run ended in failure; ``reason`` says why, ``site`` where (when known)."""

    def __init__(self, reason: str, site: str | None = None) -> None:
        self.reason = reason
        self.site = site
        super().__init__(f"run failed at {site}: {reason}" if site else f"run failed: {reason}")


class RunInterrupted(SystemExit):
    """A run stopped by SIGTERM or SIGINT; ``code`` is 128 + ``signum``, ``message`` the line already printed."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message
