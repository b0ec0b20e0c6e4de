"""Buffers handed over in sealed shared memory, for data channels over a Unix socket (one machine).

The sender copies a large buffer once into a new ``memfd`` (an anonymous in-memory file), seals it against any
change (``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE``, then ``F_SEAL_SEAL``) and passes the file descriptor on
the socket (``SCM_RIGHTS``) with the record naming the buffer; it keeps no reference. The receiver checks that
the file is a memfd sealed so (nobody, the sender included, can change its bytes or its size any more) and exactly
the announced size, then maps it privately (copy on write): the buffer costs no copy in the receiver, and what the
receiver writes into it stays its own. Anything else (no descriptor, a socket or pipe or ordinary file, a file
that is not sealed, another size, more descriptors than records) breaks the channel's protocol.

Shared buffers the peer has not read yet hold this machine's memory; a channel lets at most ``SHARED_WINDOW`` bytes
of them (or one buffer, however large) wait unread, and copies the next buffer only when there is room: the
peer has read everything once the socket holds nothing unread (``unread``).

Both ends of a Unix socket take shared buffers where the platform has memfds; ``FLARELITE_SHARED_MEMORY=0`` makes a
process send its own through the socket (C records) instead.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import stat
from collections import deque

from ...errors import ProtocolError

try:
    import fcntl
    import termios

    _SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    AVAILABLE = hasattr(os, "memfd_create") and hasattr(socket, "SCM_RIGHTS")
except (ImportError, AttributeError):  # not Linux: buffers go through the socket
    _SEALS = 0
    AVAILABLE = False

ENV = "FLARELITE_SHARED_MEMORY"  # "0": this process sends its buffers through the socket (it still takes shared ones)
SHARED_MIN = 1 << 20  # buffers this large go in shared memory (smaller ones cost less through the socket)
SHARED_WINDOW = 64 << 20  # bytes of shared buffers a channel lets its peer leave unread
MAX_QUEUED = 16  # descriptors received ahead of their records; more break the protocol
_PER_READ = 4  # descriptors one read takes; a message with more is cut by the kernel (MSG_CTRUNC): broken
_ANCILLARY = socket.CMSG_SPACE(_PER_READ * array.array("i").itemsize) if AVAILABLE else 0
_WRITE_MAX = 1 << 30  # bytes per write call (Linux writes at most ~2 GiB at once)


def sends_shared() -> bool:
    """Whether this process hands large buffers over in shared memory (the platform can, and ``ENV`` is not 0)."""
    return AVAILABLE and os.environ.get(ENV, "1").strip() != "0"


def share(view: memoryview) -> int:
    """A new sealed memfd holding a copy of ``view`` (C-contiguous bytes); the caller closes it.

    Raises:
        OSError: no memfd could be made or filled (no memory, too many open files): send the bytes otherwise.
    """
    fd = os.memfd_create("flarelite-buffer", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, view.nbytes)
        done = 0
        while done < view.nbytes:
            done += os.pwrite(fd, view[done : done + _WRITE_MAX], done)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def send_with_file(sock: socket.socket, record: bytes, fd: int) -> None:
    """Write ``record`` on ``sock`` with descriptor ``fd`` attached to its first byte (blocking)."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
    sent = sock.sendmsg([record], rights)
    if sent < len(record):  # (the descriptor went with the first byte)
        sock.sendall(record[sent:])


def unread(sock: socket.socket) -> int:
    """How much of what was written on ``sock`` its peer has not read yet (Linux counts the kernel's buffers, so
    this is more than the bytes themselves; 0 once the peer read everything, descriptors included)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count)
    return count[0]


def open_shared(fd: int, size: int) -> mmap.mmap:
    """Map the received memfd ``fd`` of ``size`` bytes privately, once it proved sealed (``fd`` stays open).

    Raises:
        ProtocolError: it is not a sealed memfd of exactly ``size`` bytes, or cannot be mapped.
    """
    try:
        info = os.fstat(fd)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:  # EINVAL: a file that takes no seals (a socket, a pipe, an ordinary file)
        raise ProtocolError(f"a shared buffer that is not a sealed memfd ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode) or seals & _SEALS != _SEALS:
        raise ProtocolError("a shared buffer whose file is not sealed against writes and resizing")
    if info.st_size != size:
        raise ProtocolError(f"a shared buffer of {info.st_size} bytes announced as {size}")
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"a shared buffer of {size} bytes cannot be mapped: {exc}") from None


class Received:
    """Descriptors that came on a socket ahead of the records that use them, in order (the reader thread's)."""

    def __init__(self) -> None:
        self._fds: deque[int] = deque()

    def recv_into(self, sock: socket.socket, view: memoryview, flags: int) -> int:
        """``sock.recv_into`` that keeps the descriptors the bytes bring (at most MAX_QUEUED waiting).

        Raises:
            OSError: from the socket.
            ProtocolError: more descriptors than records, or more in one message than a read takes.
        """
        got, ancillary, msg_flags, _ = sock.recvmsg_into([view], _ANCILLARY, flags)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self._fds.extend(fds)
        if msg_flags & socket.MSG_CTRUNC:
            raise ProtocolError(f"more than {_PER_READ} file descriptors in one message")
        if len(self._fds) > MAX_QUEUED:
            raise ProtocolError(f"{len(self._fds)} file descriptors ahead of the records that use them")
        return got

    def take(self) -> int:
        """The next descriptor (the caller closes it).

        Raises:
            ProtocolError: none came with the record.
        """
        if not self._fds:
            raise ProtocolError("a shared-buffer record without its file descriptor")
        return self._fds.popleft()

    def close(self) -> None:
        """Close every descriptor still waiting."""
        while self._fds:
            os.close(self._fds.popleft())
