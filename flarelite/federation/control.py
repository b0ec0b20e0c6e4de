"""The federation's control calls: one gRPC method carrying safe-codec requests and replies.

Sites (``flarelite client`` without a job) and admins (``flarelite job ...``, ``flarelite.admin.Session``) talk to
a long-lived server (``flarelite server`` without a job) with unary calls of ``/flarelite.Federation/Call``. A
request and a reply are each one codec container (``serialization.container``: no pickle), at most
``MAX_CALL_BYTES``; files move in chunks of ``CHUNK`` bytes. A request is ``{"op": str, "args": dict}``, a reply
``{"ok": bool, "error": str, "result": ...}``.

Who is calling (``Caller``) comes from the connection, never from the request alone:

- under mTLS, the name is the verified client certificate's CN and the role its OU (``admin`` for certificates
  made for NVFlare's admin participants by ``flarelite provision``; anything else is a site);
- without mTLS, a site is who it says it is (as in clear and tls modes everywhere in flarelite), and the admin
  role is granted only to callers on this machine (a Unix socket or a loopback address): the admin API is local
  only, and the server says so when it starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConnectError, FlareliteError

METHOD = "/flarelite.Federation/Call"
MAX_CALL_BYTES = 16 << 20  # a request or a reply
CHUNK = 4 << 20  # file transfers move in pieces of this size
ADMIN_ROLE = "admin"
POLL_MAX = 10.0  # longest a site's poll waits for a command


class ControlError(FlareliteError):
    """The server answered a control call with an error (its message says what and why)."""


class NotAFederation(ConnectError):
    """The server answers, but it is a one-job server (``flarelite server JOB``), not a long-lived one."""


@dataclass(frozen=True)
class Caller:
    """Who made a control call: ``name``, ``role`` (``"admin"`` or ``"site"``), and whether the name is proven."""

    name: str
    role: str
    verified: bool
    local: bool


def _pack(value: Any) -> bytes:
    from ..serialization.container import dumps

    return dumps(value)


def _unpack(data: bytes) -> Any:
    from ..serialization.container import loads

    return loads(data)


def is_local_peer(peer: str) -> bool:
    """Whether a gRPC ``context.peer()`` string is this machine: a Unix socket or a loopback address."""
    if peer.startswith("unix:") or peer.startswith("unix-abstract:"):
        return True
    if peer.startswith("ipv4:"):
        return peer[5:].startswith("127.")
    if peer.startswith("ipv6:"):
        return peer[5:].startswith("[::1]") or peer[5:].startswith("[::ffff:127.")
    return False


def _certificate_role(context: Any) -> tuple[str | None, str | None]:
    """(CN, OU) of the client certificate gRPC verified for this call; (None, None) without one."""
    pem = (context.auth_context().get("x509_pem_cert") or [None])[0]
    if not pem:
        return None, None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem if isinstance(pem, bytes) else pem.encode())
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    ou = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    return (cn[0] if cn else None), (ou[0] if ou else None)


def identify(context: Any, claimed: str, mode: str) -> Caller:
    """The ``Caller`` of a call that claims the name ``claimed``, in security ``mode`` (clear, tls or mtls)."""
    local = is_local_peer(context.peer())
    if mode == "mtls":
        cn, ou = _certificate_role(context)
        if not cn:
            return Caller("", "none", False, local)
        return Caller(cn, ADMIN_ROLE if ou == ADMIN_ROLE else "site", True, local)
    return Caller(claimed, ADMIN_ROLE if local else "site", False, local)


Handler = Callable[[Caller, str, dict], Any]


class ControlServer:
    """Serves ``METHOD`` at ``address`` (``host:port`` or ``unix:///path``) with ``handler(caller, op, args)``.

    ``handler`` returns the result or raises ``ControlError`` (its message goes back to the caller); any other
    exception is logged and answered as an internal error naming the op. ``tls`` is a ``TLSConfig``.
    """

    def __init__(self, address: str, tls: Any, handler: Handler, *, workers: int = 16, log: Any = None) -> None:
        import concurrent.futures
        import logging

        import grpc

        from ..communication.addresses import check_address
        from ..communication.grpc.tls import server_credentials

        check_address(address, "the server address", listening=True)
        self.mode = getattr(tls, "mode", "clear")
        self._handler = handler
        self._log = log or logging.getLogger("flarelite.federation")
        options = [
            ("grpc.max_receive_message_length", MAX_CALL_BYTES + (1 << 16)),
            ("grpc.max_send_message_length", MAX_CALL_BYTES + (1 << 16)),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(workers), options=options)
        rpc = grpc.unary_unary_rpc_method_handler(self._call)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("flarelite.Federation", {"Call": rpc}),)
        )
        creds = server_credentials(tls) if self.mode != "clear" else None
        try:
            port = self._server.add_secure_port(address, creds) if creds else self._server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConnectError(
                f"the flarelite server cannot listen on {address} (in use by another process, not this machine's "
                "address, or a socket folder that is missing or not writable)"
            )
        self.port = port

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait(grace + 1)

    def _call(self, request: bytes, context: Any) -> bytes:
        try:
            message = _unpack(request)
            op, args = message["op"], message.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ControlError("a control request is {'op': str, 'args': dict}")
            caller = identify(context, str(args.get("name", "")), self.mode)
            result = self._handler(caller, op, args)
            return _pack({"ok": True, "error": "", "result": result})
        except ControlError as exc:
            return _pack({"ok": False, "error": str(exc), "result": None})
        except (FlareliteError, KeyError, TypeError, ValueError) as exc:
            return _pack({"ok": False, "error": f"bad control request: {exc}", "result": None})
        except Exception as exc:  # a bug here: the server keeps serving, the caller hears of it
            self._log.exception("control call failed")
            return _pack({"ok": False, "error": f"the server failed on this request: {exc!r}", "result": None})


class ControlClient:
    """Makes control calls to the server at ``address`` as ``name`` (``tls``: a TLSConfig)."""

    def __init__(self, address: str, tls: Any, name: str) -> None:
        import grpc

        from ..communication.addresses import check_address
        from ..communication.grpc.tls import channel_credentials, channel_options

        check_address(address, "the server address", listening=False)
        self.address = address
        self.name = name
        mode = getattr(tls, "mode", "clear")
        options = [
            ("grpc.max_receive_message_length", MAX_CALL_BYTES + (1 << 16)),
            ("grpc.max_send_message_length", MAX_CALL_BYTES + (1 << 16)),
            *channel_options(tls),
        ]
        if mode == "clear":
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, channel_credentials(tls), options=options)
        self._stub = self._channel.unary_unary(METHOD)

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """Call ``op``; return its result.

        Raises:
            ControlError: the server refused or failed the request (its reason).
            ConnectError: the server cannot be reached within ``timeout`` seconds.
        """
        import grpc

        args.setdefault("name", self.name)
        try:
            reply = self._stub(_pack({"op": op, "args": args}), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise NotAFederation(f"the server at {self.address} runs one job; it takes no control calls") from None
            raise ConnectError(
                f"cannot reach the flarelite server at {self.address} ({getattr(code, 'name', code)}: {detail})"
            ) from None
        message = _unpack(reply)
        if not message.get("ok"):
            raise ControlError(str(message.get("error") or "the server refused the request"))
        return message.get("result")

    def wait_until_up(self, timeout: float, say: Callable[[str], None] | None = None) -> None:
        """Call ``ping`` until it answers, saying every few seconds what it waits for; ConnectError at ``timeout``."""
        deadline = time.monotonic() + timeout
        next_say = time.monotonic() + 3
        while True:
            try:
                self.call("ping", timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                return
            except NotAFederation:
                raise
            except ConnectError as exc:
                now = time.monotonic()
                if now >= deadline:
                    raise ConnectError(
                        f"could not reach the server at {self.address} within {timeout}s: is it running, and is "
                        f"this its address? ({exc})"
                    ) from None
                if say is not None and now >= next_say:
                    say(f"waiting for the flarelite server at {self.address}: {exc}")
                    next_say = now + 5
                time.sleep(min(1.0, max(0.0, deadline - now)))

    def close(self) -> None:
        self._channel.close()
