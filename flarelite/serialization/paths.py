"""Key paths in codec error messages, e.g. ``payload['DXO']['data']['model'][2]``.

The walk records nothing on the way down. When an error unwinds out of a container, the container
notes its key on the exception (``note``); at the top, ``finish`` writes the whole path into the
message (at the ``PATH`` marker, or appended). Encode errors from nesting too deep are checked
for a container that contains itself and then say so.
"""

from __future__ import annotations

from typing import Any

ROOT = "payload"
PATH = "\x00path\x00"  # marker in a message, replaced by the key path by ``finish``


def note(exc: BaseException, segment: str, container: Any) -> None:
    """Record one step of the key path (innermost first) on an error unwinding out of ``container``."""
    d = exc.__dict__
    d.setdefault("_fl_path", []).append(segment)
    d.setdefault("_fl_nodes", []).append(container)


def key_text(k: Any) -> str:
    """Return ``[key]`` for a key path; never fails (repr of a huge int raises ValueError)."""
    try:
        text = repr(k)
    except ValueError:
        text = f"<int of {k.bit_length()} bits>"
    return f"[{text if len(text) <= 60 else text[:57] + '...'}]"


def path_text(segments: list[str]) -> str:
    """Return the key path for ``segments`` (outermost first), shortened in the middle when long."""
    text = ROOT + "".join(segments)
    return text if len(text) <= 240 else f"{text[:120]}...{text[-100:]}"


def mark_too_deep(exc: BaseException) -> BaseException:
    """Mark ``exc`` as a nesting-depth error, so ``finish`` looks for a self-reference."""
    exc.__dict__["_fl_too_deep"] = True
    return exc


def finish(exc: BaseException) -> None:
    """Put the recorded key path into the message of an error that unwound to the top."""
    d = exc.__dict__
    segments = d.pop("_fl_path", [])[::-1]
    nodes = d.pop("_fl_nodes", [])[::-1]
    if d.pop("_fl_too_deep", False):
        first: dict[int, int] = {}
        for j, node in enumerate(nodes):
            i = first.setdefault(id(node), j)
            if i != j:
                exc.args = (
                    f"cannot encode the value at {path_text(segments[:i])}: it contains itself "
                    f"(at {path_text(segments[:j])}); self-referencing structures cannot be encoded",
                )
                return
    msg = str(exc.args[0]) if exc.args else ""
    path = path_text(segments)
    if PATH in msg:
        exc.args = (msg.replace(PATH, path),)
    elif segments:
        exc.args = (f"{msg} (at {path})",)
