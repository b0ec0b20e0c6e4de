"""The runtime's frame kinds and the one place where Shareables become frames and back (via the codec)."""

from __future__ import annotations

from typing import Any

from ..apis.shareable import Shareable
from ..communication.protocol import Frame
from ..serialization import decode, encode


class Kind:
    """Frame kinds exchanged by sites."""

    HELLO = "hello"  # client -> server: I joined
    WELCOME = "welcome"  # server -> client: the job's sites
    READY = "ready"  # client -> server: START_RUN done, handlers registered
    START = "start"  # server -> client: every site is ready
    FATAL = "fatal"  # client -> server: this site cannot go on (reason in topic)
    TASK = "task"  # server -> client: run a task (topic = task name, msg_id = client task id)
    RESULT = "result"  # client -> server: a task's result (ref_id = client task id)
    ABORT_TASK = "abort_task"  # server -> client: stop a task (ref_id = client task id)
    AUX_REQUEST = "aux_req"  # any -> any: aux request that wants a reply
    AUX_POST = "aux_post"  # any -> any: aux request without reply (fire and forget)
    AUX_REPLY = "aux_reply"  # reply to AUX_REQUEST (ref_id = request msg_id)
    END = "end"  # server -> client: the run is over (topic = reason when aborted)
    BYE = "bye"  # client -> server: END_RUN done


def make_frame(kind: str, payload: Any = None, **headers: Any) -> Frame:
    """Build a frame of ``kind`` whose body is ``payload`` encoded by the codec (None: empty body).

    Raises:
        UnsupportedTypeError: ``payload`` holds a value the codec does not allow.
    """
    if payload is None:
        return Frame(kind=kind, **headers)
    encoded = encode(payload)
    return Frame(kind=kind, meta=encoded.meta, buffers=list(encoded.buffers), **headers)


def frame_payload(frame: Frame, device: Any = None) -> Any:
    """Decode a frame's body (None when it has none); torch tensors go to ``device`` (default: the CPU).

    Raises:
        DecodeError: the body is malformed.
    """
    if frame.error:
        from ..errors import DecodeError

        raise DecodeError(f"{frame.kind} frame from {frame.sender!r} was not delivered whole: {frame.error}")
    if not frame.meta:
        return None
    return decode(frame.meta, frame.buffers, device=device)


def frame_shareable(frame: Frame, device: Any = None) -> Shareable:
    """Decode a frame's body that must be a Shareable (torch tensors go to ``device``, default the CPU).

    Raises:
        DecodeError: the body is malformed or is not a Shareable.
    """
    from ..errors import DecodeError

    value = frame_payload(frame, device)
    if not isinstance(value, Shareable):
        raise DecodeError(f"{frame.kind} frame from {frame.sender!r} holds {type(value).__name__}, not a Shareable")
    return value
