"""A site's filter chains: built from its app config, run where NVFlare runs them.

An app config holds ``"task_data_filters"`` and ``"task_result_filters"``, each a list of
``{"tasks": ["train", ...], "filters": [{"path": ..., "args": {...}}, ...], "direction": "in"|"out"|"inout"}``
(``direction`` optional). The filters are built with the site's ClassPolicy, like its other components, and
are components of the site too (ids ``task_data_filter_0``, ``task_result_filter_0``, ...), so they get events.

====== =========== ========= ===================================================================
side   chain       direction when
====== =========== ========= ===================================================================
server task data   out       just before a task leaves the server, on each client's copy (the peer
                             in fl_ctx is that client)
client task data   in        after the task arrives, before ``execute``
client task result out       after ``execute``, before the result is sent
server task result in        on arrival, before the workflow sees the result
====== =========== ========= ===================================================================

``BEFORE/AFTER_TASK_DATA_FILTER`` and ``BEFORE/AFTER_TASK_RESULT_FILTER`` fire around each chain. fl_ctx holds
the direction under ``"__filter_dir__"``, the task under ``TASK_NAME``/``TASK_ID`` and its data under
``TASK_DATA`` (the result chains too: ``ConvertWeights`` takes its base weights from there). An entry's
``direction`` says which direction its filters run in (default: the chain's own on that side); filters for a
direction the site never runs are built, never run, and a warning says so. On the server's task data chain
each client's copy has its own dicts and lists, but shares the arrays with the task's data: a filter makes new
arrays rather than writing into the ones it is given (received arrays may be read-only anyway).

Matching a task to chain entries: every entry that names the task, or has an ``fnmatch`` pattern matching it,
contributes its filters, in config order. Filters registered for ``"*"`` (``FedJob.to``'s default) therefore run
on every task, next to those registered for the task by name. This differs from NVFlare 2.9.0, which only looks up
the exact key ``"<task>/<direction>"``, so that its ``"*"`` filters never run (a defect: its documentation says
the default applies them to every task); flarelite does what the documentation promises.

When a filter raises (``ContentBlockedException`` included) or returns something other than a Shareable:

- client, task data: the task is not executed; the reply is ``TASK_DATA_FILTER_ERROR``;
- client, task result: the reply is ``TASK_RESULT_FILTER_ERROR`` instead of the result;
  either is ``TASK_ABORTED`` when the task was aborted meanwhile;
- server, task result: the result is replaced by ``TASK_RESULT_FILTER_ERROR``;
- server, task data: that client's task ends with a ``TASK_DATA_FILTER_ERROR`` result and is not sent.
  (NVFlare makes the client ask again later, which with a filter that always fails never ends.)

Every such reply names the filter class, the task and the site in its ``ReservedHeaderKey.ERROR`` header. Site
privacy policies (NVFlare's ``privacy.json`` scopes) are not part of flarelite; only the job's filters run.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from ..apis.dxo import DXO
from ..apis.event_type import EventType
from ..apis.filter import ContentBlockedException, Filter, FilterChainType, FilterContextKey, FilterSource
from ..apis.fl_constant import FLContextKey, ReturnCode, SiteType
from ..apis.fl_context import FLContext
from ..apis.shareable import ReservedHeaderKey, Shareable, make_reply
from ..errors import ConfigError
from .allowlist import ClassPolicy
from .components import build_component, is_component_spec

if TYPE_CHECKING:
    from .site import SiteRuntime

FILTER_DIRECTION = "__filter_dir__"  # fl_ctx prop: the direction the running chain filters ("in" or "out")
IN, OUT, INOUT = "in", "out", "inout"
CONFIG_KEYS = {
    FilterChainType.TASK_DATA_CHAIN: "task_data_filters",
    FilterChainType.TASK_RESULT_CHAIN: "task_result_filters",
}
_SITE_DIRECTION = {  # the direction each side runs each chain in
    SiteType.SERVER: {FilterChainType.TASK_DATA_CHAIN: OUT, FilterChainType.TASK_RESULT_CHAIN: IN},
    SiteType.CLIENT: {FilterChainType.TASK_DATA_CHAIN: IN, FilterChainType.TASK_RESULT_CHAIN: OUT},
}
_EVENTS = {
    FilterChainType.TASK_DATA_CHAIN: (EventType.BEFORE_TASK_DATA_FILTER, EventType.AFTER_TASK_DATA_FILTER),
    FilterChainType.TASK_RESULT_CHAIN: (EventType.BEFORE_TASK_RESULT_FILTER, EventType.AFTER_TASK_RESULT_FILTER),
}
_PROPS = {
    FilterChainType.TASK_DATA_CHAIN: FLContextKey.TASK_DATA,
    FilterChainType.TASK_RESULT_CHAIN: FLContextKey.TASK_RESULT,
}
_LABEL = {FilterChainType.TASK_DATA_CHAIN: "task data", FilterChainType.TASK_RESULT_CHAIN: "task result"}
_GLOB = set("*?[")


class FilterError(Exception):
    """A filter of a chain failed on a task; ``reply()`` is the Shareable that stands for the task or result."""

    def __init__(self, chain: str, filter_name: str, task_name: str, site: str, cause: str) -> None:
        self.chain = chain
        self.filter_name = filter_name
        self.task_name = task_name
        self.site = site
        self.return_code = (
            ReturnCode.TASK_DATA_FILTER_ERROR
            if chain == FilterChainType.TASK_DATA_CHAIN
            else ReturnCode.TASK_RESULT_FILTER_ERROR
        )
        super().__init__(f"{_LABEL[chain]} filter {filter_name} failed on task {task_name!r} at {site}: {cause}")

    def reply(self, aborted: bool = False, like: Shareable | None = None) -> Shareable:
        """The error reply (TASK_ABORTED when ``aborted``), with the cookie jar and peer props of ``like``."""
        reply = make_reply(
            ReturnCode.TASK_ABORTED if aborted else self.return_code, {ReservedHeaderKey.ERROR: str(self)}
        )
        if like is not None:
            jar = like.get_cookie_jar()
            if jar:
                reply.set_cookie_jar(jar)
            props = like.get_peer_props()
            if props is not None:
                reply.set_peer_props(props)
        return reply


class FilterChain:
    """One chain (task data or task result) of one site: which filters run for which task, in order."""

    def __init__(self, chain_type: str) -> None:
        self.chain_type = chain_type
        self._entries: list[tuple[list[str], list[Filter]]] = []
        self._named: set[str] = set()

    def add(self, tasks: list[str], filters: list[Filter], where: str) -> None:
        """Register ``filters`` for ``tasks`` (names or fnmatch patterns).

        Raises:
            ConfigError: a task (or pattern) already has filters in this chain.
        """
        for task in tasks:
            if task in self._named:
                raise ConfigError(
                    f"{where}: task {task!r} already has {_LABEL[self.chain_type]} filters; list a task in one "
                    "entry only (filters of one entry run in order)"
                )
        self._named.update(tasks)
        self._entries.append((list(tasks), filters))

    def filters_for(self, task_name: str) -> list[Filter]:
        """The filters that run for ``task_name``: those of every entry that names it or has a matching pattern,
        in config order."""
        out: list[Filter] = []
        for tasks, filters in self._entries:
            if task_name in tasks or any(_GLOB & set(t) and fnmatch.fnmatchcase(task_name, t) for t in tasks):
                out.extend(filters)
        return out


class SiteFilters:
    """The filter chains one site runs (empty until ``load``)."""

    def __init__(self, side: str) -> None:
        if side not in _SITE_DIRECTION:
            raise ValueError(f"side must be {SiteType.SERVER!r} or {SiteType.CLIENT!r}, got {side!r}")
        self.side = side
        self.chains = {chain: FilterChain(chain) for chain in CONFIG_KEYS}

    def load(self, site: SiteRuntime, app_config: dict, policy: ClassPolicy | None) -> None:
        """Build the chains of ``app_config`` with ``policy``; add the filters to ``site.components``.

        Raises:
            ConfigError: an entry is malformed, a class is not allowed or cannot be built, or is not a Filter.
        """
        for chain, key in CONFIG_KEYS.items():
            entries = app_config.get(key) or []
            if not isinstance(entries, list):
                raise ConfigError(f"{site.name}: {key} must be a list of {{'tasks', 'filters'}} entries")
            n = 0
            for i, entry in enumerate(entries):
                where = f"{site.name}: {key}[{i}]"
                tasks, specs, directions = _parse_entry(entry, where)
                filters = []
                for j, spec in enumerate(specs):
                    f = build_component(spec, f"{where}.filters[{j}]", policy)
                    if not isinstance(f, Filter):
                        raise ConfigError(f"{where}.filters[{j}]: {spec['path']} is not a Filter")
                    f.set_prop(FilterContextKey.CHAIN_TYPE, chain)
                    f.set_prop(FilterContextKey.SOURCE, FilterSource.JOB)
                    filters.append(f)
                    if not any(c is f for c in site.components.values()):
                        cid = f"{chain}_filter_{n}"
                        while cid in site.components:
                            cid += "_"
                        site.components[cid] = f
                    n += 1
                mine = _SITE_DIRECTION[self.side][chain]
                if mine in directions:
                    self.chains[chain].add(tasks, filters, where)
                else:
                    site.log.warning(
                        "%s: direction %r: the %s filters for tasks %s never run here (the %s runs them %r)",
                        where,
                        entry.get("direction"),
                        _LABEL[chain],
                        tasks,
                        self.side,
                        mine,
                    )

    def apply(
        self, site: SiteRuntime, chain: str, task_name: str, shareable: Shareable, fl_ctx: FLContext
    ) -> Shareable:
        """Run ``chain``'s filters for ``task_name`` on ``shareable`` (firing the BEFORE/AFTER events).

        Raises:
            FilterError: a filter raised or returned something other than a Shareable.
        """
        prop = _PROPS[chain]
        before, after = _EVENTS[chain]
        fl_ctx.set_prop(FILTER_DIRECTION, _SITE_DIRECTION[self.side][chain], private=True, sticky=False)
        fl_ctx.set_prop(prop, shareable, private=True, sticky=False)
        site.fire_event(before, fl_ctx)
        for f in self.chains[chain].filters_for(task_name):
            name = type(f).__name__
            try:
                result = f.process(shareable, fl_ctx)
            except ContentBlockedException as exc:
                error = FilterError(chain, name, task_name, site.name, f"content blocked: {exc}")
                site.log.warning("%s", error)
                raise error from exc
            except Exception as exc:
                error = FilterError(chain, name, task_name, site.name, repr(exc))
                site.log.error("%s", error, exc_info=exc)
                raise error from exc
            if not isinstance(result, Shareable):
                error = FilterError(
                    chain, name, task_name, site.name, f"process returned {type(result).__name__}, not a Shareable"
                )
                site.log.error("%s", error)
                raise error
            shareable = result
        fl_ctx.set_prop(prop, shareable, private=True, sticky=False)
        site.fire_event(after, fl_ctx)
        return shareable

    def needs_copy(self, chain: str, task_name: str) -> bool:
        """Whether filters run for ``task_name`` in ``chain`` (the server copies a task's data for them)."""
        return bool(self.chains[chain].filters_for(task_name))


def _parse_entry(entry: Any, where: str) -> tuple[list[str], list[dict], set[str]]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected {{'tasks': [...], 'filters': [...]}}, got {type(entry).__name__}")
    unknown = sorted(set(entry) - {"tasks", "filters", "direction"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (a filter entry has 'tasks', 'filters', 'direction')")
    tasks = entry.get("tasks", ["*"])
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"{where}: 'tasks' must be a non-empty list of task names or patterns, got {tasks!r}")
    specs = entry.get("filters")
    if not isinstance(specs, list) or not all(is_component_spec(s) for s in specs):
        raise ConfigError(f"{where}: 'filters' must be a list of {{'path': 'module.Class', 'args': {{...}}}} entries")
    direction = entry.get("direction")
    if direction is None:
        return list(tasks), specs, {IN, OUT}  # the chain's own direction on whichever side loads it
    if direction not in (IN, OUT, INOUT):
        raise ConfigError(f"{where}: 'direction' must be 'in', 'out' or 'inout', got {direction!r}")
    return list(tasks), specs, {IN, OUT} if direction == INOUT else {direction}


def structural_copy(value: Any) -> Any:
    """Copy the containers of ``value`` (Shareable, dict, list, tuple, DXO); arrays and other leaves are shared.

    The server filters each client's copy of a task's data: a filter that changes the dicts it is given (removes
    keys, replaces values) then changes only that copy, without copying the arrays of a model once per client.
    """
    if isinstance(value, Shareable):
        out = Shareable()
        for k, v in value.items():
            out[k] = structural_copy(v)
        return out
    if isinstance(value, DXO):
        return DXO(value.data_kind, structural_copy(value.data), structural_copy(value.meta))
    if isinstance(value, dict):
        return {k: structural_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [structural_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(structural_copy(v) for v in value)
    return value
