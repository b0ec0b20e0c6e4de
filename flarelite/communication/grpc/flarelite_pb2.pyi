from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("hello", "welcome", "refused", "header", "chunk", "heartbeat", "peer", "close", "cancel", "credit", "switch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    SWITCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    welcome: Welcome
    refused: Refused
    header: Header
    chunk: Chunk
    heartbeat: Heartbeat
    peer: PeerEvent
    close: Close
    cancel: Cancel
    credit: Credit
    switch: Switch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., refused: _Optional[_Union[Refused, _Mapping]] = ..., header: _Optional[_Union[Header, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., peer: _Optional[_Union[PeerEvent, _Mapping]] = ..., close: _Optional[_Union[Close, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., switch: _Optional[_Union[Switch, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("name", "version", "p2p_address", "data_plane")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    P2P_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DATA_PLANE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    p2p_address: str
    data_plane: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., p2p_address: _Optional[str] = ..., data_plane: _Optional[bool] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("name", "peers", "max_message_size", "addresses", "relay_window", "data_address", "data_token")
    class AddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    RELAY_WINDOW_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DATA_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    peers: _containers.RepeatedScalarFieldContainer[str]
    max_message_size: int
    addresses: _containers.ScalarMap[str, str]
    relay_window: int
    data_address: str
    data_token: bytes
    def __init__(self, name: _Optional[str] = ..., peers: _Optional[_Iterable[str]] = ..., max_message_size: _Optional[int] = ..., addresses: _Optional[_Mapping[str, str]] = ..., relay_window: _Optional[int] = ..., data_address: _Optional[str] = ..., data_token: _Optional[bytes] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("stream", "kind", "sender", "target", "msg_id", "ref_id", "topic", "job_id", "rc", "meta", "meta_size", "buffer_sizes", "error", "blob")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    REF_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    META_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    stream: int
    kind: str
    sender: str
    target: str
    msg_id: str
    ref_id: str
    topic: str
    job_id: str
    rc: str
    meta: bytes
    meta_size: int
    buffer_sizes: _containers.RepeatedScalarFieldContainer[int]
    error: str
    blob: int
    def __init__(self, stream: _Optional[int] = ..., kind: _Optional[str] = ..., sender: _Optional[str] = ..., target: _Optional[str] = ..., msg_id: _Optional[str] = ..., ref_id: _Optional[str] = ..., topic: _Optional[str] = ..., job_id: _Optional[str] = ..., rc: _Optional[str] = ..., meta: _Optional[bytes] = ..., meta_size: _Optional[int] = ..., buffer_sizes: _Optional[_Iterable[int]] = ..., error: _Optional[str] = ..., blob: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("stream", "buffer", "data")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream: int
    buffer: int
    data: bytes
    def __init__(self, stream: _Optional[int] = ..., buffer: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time",)
    TIME_FIELD_NUMBER: _ClassVar[int]
    time: float
    def __init__(self, time: _Optional[float] = ...) -> None: ...

class PeerEvent(_message.Message):
    __slots__ = ("name", "connected", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    connected: bool
    address: str
    def __init__(self, name: _Optional[str] = ..., connected: _Optional[bool] = ..., address: _Optional[str] = ...) -> None: ...

class Close(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("stream", "reason")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stream: int
    reason: str
    def __init__(self, stream: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Switch(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Credit(_message.Message):
    __slots__ = ("target", "bytes")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    target: str
    bytes: int
    def __init__(self, target: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...
