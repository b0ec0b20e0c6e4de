"""Folders moved between admin, server and sites: gzipped tar files, written and read defensively.

``pack`` stores regular files and folders only (no links, devices or fifos), at most ``max_bytes`` of them;
``unpack`` takes only regular files and folders whose paths stay inside the destination (Python's ``data``
filter: no absolute paths, no ``..``, no links, no special files, no set-id bits), at most ``max_bytes`` and
``max_files``, so an archive from another party can neither write outside its folder nor fill the disk.
"""

from __future__ import annotations

import os
import tarfile

from ..errors import ConfigError

MAX_ARCHIVE_BYTES = 4 << 30  # unpacked bytes of one archive
MAX_FILES = 100_000


class ArchiveError(ConfigError):
    """A folder cannot be packed, or an archive cannot be unpacked safely (the message says which and why)."""


def pack(folder: str, archive: str, *, max_bytes: int = MAX_ARCHIVE_BYTES, skip: tuple[str, ...] = ()) -> int:
    """Write ``folder``'s files into the gzipped tar ``archive`` (paths relative to ``folder``); return its size.

    ``skip``: names (of files or folders, at any depth) left out.

    Raises:
        ArchiveError: ``folder`` is missing or holds more than ``max_bytes``.
    """
    if not os.path.isdir(folder):
        raise ArchiveError(f"{folder} is not a folder")
    total = 0
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d not in skip and not os.path.islink(os.path.join(root, d)))
            rel_root = os.path.relpath(root, folder)
            if rel_root != ".":
                tar.add(root, arcname=rel_root, recursive=False)
            for name in sorted(files):
                path = os.path.join(root, name)
                if name in skip or os.path.islink(path) or not os.path.isfile(path):
                    continue  # links, sockets, fifos stay behind
                total += os.path.getsize(path)
                if total > max_bytes:
                    raise ArchiveError(f"{folder} holds more than {max_bytes} bytes; it cannot be sent")
                tar.add(path, arcname=os.path.normpath(os.path.join(rel_root, name)), recursive=False)
    return os.path.getsize(archive)


def unpack(archive: str, dest: str, *, max_bytes: int = MAX_ARCHIVE_BYTES, max_files: int = MAX_FILES) -> None:
    """Extract the gzipped tar ``archive`` into ``dest`` (made if missing).

    Raises:
        ArchiveError: not a gzipped tar, more than ``max_files`` entries or ``max_bytes``, or an entry the
            ``data`` filter refuses (a path outside ``dest``, a link, a device...), named in the message.
    """
    os.makedirs(dest, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            total = 0
            for member in tar:
                if len(members) >= max_files:
                    raise ArchiveError(f"{archive} holds more than {max_files} entries")
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(f"{archive}: {member.name!r} is not a regular file or folder")
                total += member.size
                if total > max_bytes:
                    raise ArchiveError(f"{archive} unpacks to more than {max_bytes} bytes")
                members.append(member)
            for member in members:
                try:
                    tar.extract(member, dest, filter="data")
                except tarfile.FilterError as exc:
                    raise ArchiveError(f"{archive}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise ArchiveError(f"{archive}: {exc}") from None
        raise ArchiveError(f"{archive} is not a readable gzipped tar: {exc}") from None
