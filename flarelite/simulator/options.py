"""The simulator options NVFlare users type: threads (``-t``), GPUs (``-gpu``), log config (``-l``), ``-m``.

Each option is checked here once, with an error that names the value and the choices, and used by the CLI,
``FedJob.simulator_run`` and the site processes alike.

- threads: how many sites execute a task at once (the server hands out at most that many client tasks at a
  time; the next site gets its task when one finishes). The default is every site. Fewer threads than sites
  make sites take turns, as NVFlare's simulator does; a synchronous peer-to-peer job, whose sites wait for
  each other inside a task, then cannot finish (NVFlare's gotcha too): it needs threads == sites.
- gpu: ``"0,1"`` (one device per group) or ``"[0,1],[2]"`` (groups of devices). Site i gets group i modulo the
  number of groups as its ``CUDA_VISIBLE_DEVICES`` (site-1 -> 0, site-2 -> 1, site-3 -> 0 ...), in the processes
  modes; one process (``protocol="memory"``) cannot give sites different devices. Unlike NVFlare 2.9, several
  groups do not force one thread per group: every site has its own process, whatever its device.
- log config: a mode (``concise``, ``full``, ``verbose``, as NVFlare's), a level name or number (``info``,
  ``DEBUG``, ``30``), or the path of a JSON ``logging.config.dictConfig`` file. It is applied in the process that
  runs the simulator and in every site process; relative ``filename`` entries of a file config are put in the
  site's own folder (``WS/<site>/``; the simulator's process: ``WS/``), as NVFlare does with its log root.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.config
import os
import re
from typing import Any

from .. import logsafe
from ..errors import ConfigError

_log = logging.getLogger("flarelite.simulator")

LOG_MODES = ("concise", "full", "verbose")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_MAX_CLIENTS = 100
DEFAULT_MAX_BLOCKED_SITES = 1000  # sites whose tasks may run (and block) at once in the in-process simulator
CONCISE_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
VERBOSE_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(threadName)s - %(message)s"
INTERNAL_LOGGERS = "flarelite."  # the runtime's own loggers (flarelite.ServerRuntime, flarelite.grpc, ...)

_MODE_LEVELS = {"concise": logging.INFO, "full": logging.INFO, "verbose": logging.DEBUG}
_GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")


class ConciseFilter(logging.Filter):
    """The console of ``concise``: the jobs' components and scripts at INFO, flarelite's own lines only from
    WARNING up (NVFlare's concise console shows its FL components and hides its internals the same way)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not record.name.startswith(INTERNAL_LOGGERS)


def _choices() -> str:
    return f"a mode ({', '.join(LOG_MODES)}), a level ({', '.join(LOG_LEVELS)}, or 0-50) or a JSON dictConfig file"


def check_log_config(log_config: Any) -> str:
    """Return ``log_config`` normalised (mode and level names lower case, a file as an absolute path).

    Raises:
        ConfigError: it is none of a mode, a level or an existing file; the message lists the choices.
    """
    if not isinstance(log_config, (str, os.PathLike)) or not os.fspath(log_config).strip():
        raise ConfigError(f"log_config must be {_choices()}, got {log_config!r}")
    text = os.fspath(log_config).strip()
    if text.lower() in LOG_MODES or text.lower() in LOG_LEVELS:
        return text.lower()
    if text.isdigit():
        if int(text) > logging.CRITICAL:
            raise ConfigError(f"log_config level {text} is out of range: a level number is 0-50")
        return text
    if os.path.isfile(text):
        return os.path.abspath(text)
    if os.path.exists(text):
        raise ConfigError(f"log_config {text!r} is not a file: give {_choices()}")
    raise ConfigError(f"unknown log_config {text!r}: give {_choices()} (no such file either)")


def apply_log_config(log_config: str, base_dir: str | None = None) -> None:
    """Configure this process's logging from ``log_config`` (see ``check_log_config``).

    A mode replaces the root logger's handlers with one console handler (stderr) and sets the root level;
    a level sets the root level only; a file is given to ``logging.config.dictConfig``, its relative
    ``filename`` entries joined to ``base_dir``. The root level chosen so stays for the run: the site log
    files (``WS/<site>/log.txt``) get what it lets through, DEBUG included.

    Raises:
        ConfigError: ``log_config`` is invalid, or the file cannot be read or applied (the message says why).
    """
    from ..runtime.logs import CONSOLE_FORMAT, pin_root_level  # the runtime loads only when a config is applied

    value = check_log_config(log_config)
    root = logging.getLogger()
    if value in LOG_MODES:
        for handler in list(root.handlers):  # as a dictConfig would: the mode's console replaces the others
            root.removeHandler(handler)
        handler = logging.StreamHandler()
        formats = {"concise": CONCISE_FORMAT, "full": CONSOLE_FORMAT, "verbose": VERBOSE_FORMAT}
        handler.setFormatter(logsafe.EscapingFormatter(formats[value]))
        logsafe.install(handler)
        if value == "concise":
            handler.addFilter(ConciseFilter())
        root.addHandler(handler)
        root.setLevel(_MODE_LEVELS[value])
    elif value in LOG_LEVELS or value.isdigit():
        root.setLevel(int(value) if value.isdigit() else getattr(logging, value.upper()))
    else:
        _apply_file(value, base_dir)
    pin_root_level(root.level)


def _apply_file(path: str, base_dir: str | None) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read log_config {path}: {exc}") from exc
    if not isinstance(config, dict):
        what = type(config).__name__
        raise ConfigError(f"log_config {path} must hold a JSON object (a logging dict config), not a {what}")
    config = copy.deepcopy(config)
    config.setdefault("version", 1)
    config.setdefault("disable_existing_loggers", False)  # flarelite's loggers exist before the config comes
    if base_dir:
        for handler in (config.get("handlers") or {}).values():
            name = handler.get("filename") if isinstance(handler, dict) else None
            if isinstance(name, str) and name and not os.path.isabs(name):
                handler["filename"] = os.path.join(base_dir, name)
                os.makedirs(os.path.dirname(handler["filename"]), exist_ok=True)
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError, OSError) as exc:
        raise ConfigError(f"cannot apply log_config {path}: {exc}") from exc


def parse_gpu(gpu: Any) -> list[str]:
    """Return the GPU groups of ``gpu`` (``"0,1"`` -> ``["0", "1"]``; ``"[0,1],[2]"`` -> ``["0,1", "2"]``),
    each a ``CUDA_VISIBLE_DEVICES`` value.

    Raises:
        ConfigError: ``gpu`` is not a comma list of device ids or of bracketed groups of them.
    """
    example = "give device ids like '0,1' (a device per group) or '[0,1],[2]' (groups)"
    if not isinstance(gpu, str) or not gpu.strip():
        raise ConfigError(f"gpu must be a string of GPU ids: {example}; got {gpu!r}")
    text = gpu.replace(" ", "")
    if "[" in text or "]" in text:
        if not re.fullmatch(r"\[[^\[\]]*\](,\[[^\[\]]*\])*", text):
            raise ConfigError(f"gpu {gpu!r} mixes groups and ids or has unbalanced brackets: {example}")
        groups = [g.split(",") for g in re.findall(r"\[([^\[\]]*)\]", text)]
    else:
        groups = [[i] for i in text.split(",")]
    bad = [i for g in groups for i in g if not _GPU_ID.match(i)]
    if bad or any(not g for g in groups):
        raise ConfigError(f"gpu {gpu!r} has invalid device ids {bad or ['(empty)']}: {example}")
    return [",".join(g) for g in groups]


def assign_gpus(names: list[str], gpu: str) -> dict[str, str]:
    """Give each site its ``CUDA_VISIBLE_DEVICES``, round robin over the groups of ``gpu``."""
    groups = parse_gpu(gpu)
    if len(groups) > len(names):
        _log.warning(
            "gpu=%r has %d groups for %d sites: groups %s get no site",
            gpu,
            len(groups),
            len(names),
            groups[len(names) :],
        )
    return {name: groups[i % len(groups)] for i, name in enumerate(names)}


def check_threads(threads: Any, n_sites: int) -> int:
    """Return how many sites may execute a task at once (None: all ``n_sites``); warn when they must take turns.

    Raises:
        ConfigError: ``threads`` is not a positive int, or more than the number of sites.
    """
    if threads is None:
        return n_sites
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive int (how many sites execute tasks at once), got {threads!r}")
    if threads > n_sites:
        raise ConfigError(f"threads={threads} cannot be more than the number of clients ({n_sites})")
    if threads < n_sites:
        _log.warning(
            "threads=%d for %d sites: at most %d site(s) execute a task at once and the others wait their turn; "
            "a job whose sites wait for each other inside a task (synchronous peer-to-peer) needs threads=%d",
            threads,
            n_sites,
            threads,
            n_sites,
        )
    return threads


def check_max_clients(max_clients: Any, names: list[str]) -> None:
    """Raise ConfigError when there are more sites than ``max_clients``."""
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
        raise ConfigError(f"max_clients must be a positive int, got {max_clients!r}")
    if len(names) > max_clients:
        raise ConfigError(
            f"the number of clients ({len(names)}) cannot be more than max_clients ({max_clients}); "
            "raise it with max_clients= (run_simulation, FedJob.simulator_run) or -m/--max_clients (flarelite "
            "simulator)"
        )
