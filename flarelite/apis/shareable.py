"""Shareable: the dict that travels between sites, with framework headers under ``__headers__``."""

from __future__ import annotations

import copy
from typing import Any

from .fl_constant import ReturnCode


class ReservedHeaderKey:
    """Header keys the framework reads and writes."""

    HEADERS = "__headers__"
    TOPIC = "__topic__"
    RC = "__rc__"
    COOKIE_JAR = "__cookie_jar__"
    PEER_PROPS = "__peer_props__"
    REPLY_IS_LATE = "__reply_is_late__"
    TASK_NAME = "__task_name__"
    TASK_ID = "__task_id__"
    WORKFLOW = "__workflow__"
    AUDIT_EVENT_ID = "__audit_event_id__"
    CONTENT_TYPE = "__content_type__"
    TASK_OPERATOR = "__task_operator__"
    ERROR = "__error__"
    PEER_CTX = "__peer_ctx__"
    MSG_ROOT_ID = "__msg_root_id__"
    MSG_ROOT_TTL = "__msg_root_ttl__"
    PASS_THROUGH = "__pass_through__"


class Shareable(dict):
    """A dict of payload values plus a header dict stored under ``__headers__``.

    Headers carry the return code, topic, task name and id, cookies and the sender's (peer's) props.
    """

    def __init__(self, data: dict | None = None) -> None:
        super().__init__()
        if data:
            self.update(data)
        if not isinstance(self.get(ReservedHeaderKey.HEADERS), dict):
            self[ReservedHeaderKey.HEADERS] = {}

    def _headers(self) -> dict:
        headers = self.get(ReservedHeaderKey.HEADERS)
        if not isinstance(headers, dict):
            headers = {}
            self[ReservedHeaderKey.HEADERS] = headers
        return headers

    def set_header(self, key: str, value: Any) -> None:
        """Set header ``key`` to ``value``."""
        self._headers()[key] = value

    def get_header(self, key: str, default: Any = None) -> Any:
        """Return header ``key``, or ``default`` when it is not set."""
        return self._headers().get(key, default)

    def get_return_code(self, default: str = ReturnCode.OK) -> str:
        """Return the ``__rc__`` header, or ``default`` (OK) when it is not set."""
        return self.get_header(ReservedHeaderKey.RC, default)

    def set_return_code(self, rc: str) -> None:
        """Set the ``__rc__`` header."""
        self.set_header(ReservedHeaderKey.RC, rc)

    def add_cookie(self, name: str, data: Any) -> None:
        """Add a cookie; cookies set on a task come back on its result."""
        jar = self.get_cookie_jar()
        if jar is None:
            jar = {}
            self.set_cookie_jar(jar)
        jar[name] = data

    def get_cookie_jar(self) -> dict | None:
        """Return the cookie jar dict, or None."""
        return self.get_header(ReservedHeaderKey.COOKIE_JAR)

    def set_cookie_jar(self, cookie_jar: dict | None) -> None:
        """Replace the cookie jar."""
        self.set_header(ReservedHeaderKey.COOKIE_JAR, cookie_jar)

    def get_cookie(self, name: str, default: Any = None) -> Any:
        """Return cookie ``name``, or ``default``."""
        jar = self.get_cookie_jar()
        if not jar:
            return default
        return jar.get(name, default)

    def set_peer_props(self, props: dict) -> None:
        """Set the sender's public context props (identity name, job id, ...)."""
        self.set_header(ReservedHeaderKey.PEER_PROPS, props)

    def get_peer_props(self) -> dict | None:
        """Return the sender's public context props, or None."""
        return self.get_header(ReservedHeaderKey.PEER_PROPS)

    def get_peer_prop(self, key: str, default: Any) -> Any:
        """Return one of the sender's props, e.g. ``ReservedKey.IDENTITY_NAME``; ``default`` must be passed."""
        props = self.get_peer_props()
        if not isinstance(props, dict):
            return default
        return props.get(key, default)

    def set_peer_context(self, peer_ctx: Any) -> None:
        """Store the peer's context props (as a dict) in the ``__peer_ctx__`` header."""
        self.set_header(ReservedHeaderKey.PEER_CTX, peer_ctx)

    def get_peer_context(self) -> Any:
        """Return what ``set_peer_context`` stored, or None."""
        return self.get_header(ReservedHeaderKey.PEER_CTX)

    def to_bytes(self) -> bytes:
        """Encode with flarelite's safe codec (no pickle)."""
        from flarelite.serialization import dumps

        return dumps(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Shareable:
        """Decode bytes made by ``to_bytes``; raises ``ValueError`` if they do not hold a Shareable."""
        from flarelite.serialization import loads

        value = loads(data)
        if not isinstance(value, Shareable):
            raise ValueError(f"bytes decode to {type(value).__name__}, not Shareable")
        return value


def make_reply(rc: str, headers: dict | None = None) -> Shareable:
    """Return an empty Shareable whose ``__rc__`` header is ``rc``, plus any extra ``headers``."""
    reply = Shareable()
    reply.set_return_code(rc)
    if headers:
        for k, v in headers.items():
            reply.set_header(k, v)
    return reply


def make_copy(source: Shareable, exclude_headers: list[str] | None = None) -> Shareable:
    """Return a shallow copy of ``source``'s content with a deep copy of its headers (minus ``exclude_headers``)."""
    result = Shareable()
    for k, v in source.items():
        if k != ReservedHeaderKey.HEADERS:
            result[k] = v
    headers = copy.deepcopy(source.get(ReservedHeaderKey.HEADERS) or {})
    for k in exclude_headers or ():
        headers.pop(k, None)
    result[ReservedHeaderKey.HEADERS] = headers
    return result
