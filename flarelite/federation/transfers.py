"""Files moved over control calls, in ``CHUNK``-sized pieces: uploads staged on the server, downloads read back.

The server keeps an upload in ``WS/.staging/`` while it comes: pieces must arrive in order (each names its
offset), an upload holds at most ``max_bytes``, a caller has at most ``MAX_OPEN`` uploads open, and one left
unfinished for ``STALE_SECONDS`` is deleted. Memory stays one piece per call.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from typing import Any

from .control import CHUNK, ControlError

MAX_OPEN = 8
STALE_SECONDS = 600.0
_TOKEN = re.compile(r"[0-9a-f]{32}\Z")


class Staging:
    """Uploads in progress, per caller, under ``folder``."""

    def __init__(self, folder: str, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        shutil.rmtree(folder, ignore_errors=True)  # what a previous server left unfinished
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], list] = {}  # (caller, token) -> [path, size, last touched, done]

    def put(self, caller: str, token: Any, offset: Any, data: Any, final: bool) -> dict:
        """Append ``data`` at ``offset`` of upload ``token`` (hex, chosen by the caller); ``final`` closes it."""
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise ControlError("an upload's token is 32 hex digits")
        if type(offset) is not int or not isinstance(data, (bytes, bytearray)) or len(data) > CHUNK:
            raise ControlError(f"an upload piece is bytes of at most {CHUNK} at an int offset")
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            key = (caller, token)
            entry = self._open.get(key)
            if entry is None:
                if offset != 0:
                    raise ControlError(f"upload {token} is not open (it starts at offset 0)")
                if sum(1 for c, _ in self._open if c == caller) >= MAX_OPEN:
                    raise ControlError(f"{caller} has {MAX_OPEN} uploads open already; finish or drop one")
                digest = hashlib.sha256(caller.encode()).hexdigest()[:16]
                entry = self._open[key] = [os.path.join(self.folder, f"{digest}-{token}"), 0, now, False]
            if entry[3]:
                raise ControlError(f"upload {token} is finished already")
            if offset != entry[1]:
                raise ControlError(f"upload {token}: a piece at offset {offset}, expected {entry[1]}")
            if entry[1] + len(data) > self.max_bytes:
                self._drop(key)
                raise ControlError(f"upload {token} is over the limit of {self.max_bytes} bytes")
            with open(entry[0], "ab") as f:
                f.write(data)
            entry[1] += len(data)
            entry[2] = now
            entry[3] = bool(final)
            return {"size": entry[1]}

    def take(self, caller: str, token: Any) -> str:
        """The file of ``caller``'s finished upload ``token``, handed over (the caller of ``take`` removes it)."""
        with self._lock:
            entry = self._open.get((caller, token)) if isinstance(token, str) else None
            if entry is None or not entry[3]:
                raise ControlError(f"no finished upload {token!r} from {caller}")
            del self._open[(caller, token)]
            return entry[0]

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._open.pop(key, None)
        if entry is not None:
            try:
                os.unlink(entry[0])
            except OSError:
                pass

    def _expire(self, now: float) -> None:
        for key in [k for k, e in self._open.items() if now - e[2] > STALE_SECONDS]:
            self._drop(key)


def upload(client: Any, path: str, timeout: float = 60.0) -> str:
    """Send the file at ``path`` with ``put`` calls; return the upload's token (for the call that uses it)."""
    token = secrets.token_hex(16)
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            final = offset + len(data) >= size
            client.call("put", timeout=timeout, token=token, offset=offset, data=data, final=final)
            offset += len(data)
            if final:
                return token


def download(client: Any, op: str, dest: str, timeout: float = 60.0, **args: Any) -> int:
    """Fetch a file with ``op`` calls (``args`` plus ``offset``) into ``dest``; return its size."""
    offset = 0
    with open(dest + ".part", "wb") as f:
        while True:
            piece = client.call(op, timeout=timeout, offset=offset, **args)
            data, size = piece["data"], piece["size"]
            f.write(data)
            offset += len(data)
            if offset >= size or not data:
                break
    os.replace(dest + ".part", dest)
    return offset


def read_piece(path: str, offset: Any) -> dict:
    """``{"data", "size"}``: the piece of the file at ``path`` starting at ``offset``."""
    if type(offset) is not int or offset < 0:
        raise ControlError("offset must be an int >= 0")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(min(offset, size))
        return {"data": f.read(CHUNK), "size": size}
