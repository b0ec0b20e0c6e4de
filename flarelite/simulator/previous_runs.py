"""A workspace that holds an earlier run is moved aside before the next one, never silently mixed with it.

What marks a run: ``run_result.json`` or ``log.txt`` in one of the workspace's folders. Everything of it moves
into ``WS/.previous-N`` (N one more than the highest there), except what an operator put there for the sites to
read (``<site>/local/``, e.g. ``resources.json`` with a class allow-list), which stays; at most ``KEEP`` earlier
runs are kept, the oldest removed first.
"""

from __future__ import annotations

import os
import re
import shutil

KEEP = 3
_PREVIOUS = re.compile(r"\.previous-(\d+)\Z")
_MARKS = ("run_result.json", "log.txt")


def holds_a_run(workspace: str) -> bool:
    """Whether ``workspace`` holds the files of an earlier run."""
    if not os.path.isdir(workspace):
        return False
    for entry in os.scandir(workspace):
        if entry.is_dir(follow_symlinks=False) and not _PREVIOUS.match(entry.name):
            if any(os.path.exists(os.path.join(entry.path, mark)) for mark in _MARKS):
                return True
    return False


def set_aside(workspace: str) -> str | None:
    """Move an earlier run in ``workspace`` to ``workspace/.previous-N``; return that folder (None: nothing to move)."""
    if not holds_a_run(workspace):
        return None
    numbers = sorted(int(m.group(1)) for m in map(_PREVIOUS.match, os.listdir(workspace)) if m)
    target = os.path.join(workspace, f".previous-{(numbers[-1] if numbers else 0) + 1}")
    os.makedirs(target)
    for entry in os.listdir(workspace):
        path = os.path.join(workspace, entry)
        if _PREVIOUS.match(entry) or path == target:
            continue
        local = os.path.join(path, "local")
        if os.path.isdir(local) and not os.path.islink(path):  # a site's own config stays where the site reads it
            os.makedirs(os.path.join(target, entry))
            for inner in os.listdir(path):
                if inner != "local":
                    shutil.move(os.path.join(path, inner), os.path.join(target, entry, inner))
            shutil.copytree(local, os.path.join(target, entry, "local"), symlinks=True)
            continue
        shutil.move(path, os.path.join(target, entry))
    for old in numbers[: max(0, len(numbers) + 1 - KEEP)]:
        shutil.rmtree(os.path.join(workspace, f".previous-{old}"), ignore_errors=True)
    return target
