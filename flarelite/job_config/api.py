"""FedJob: build a job in Python (``to``, ``to_server``, ``to_clients``), export it, or run it in the simulator.

Targets are ``"server"``, a client site name (``"site-1"``), or ``"@ALL"`` (every client; what ``to_clients``
uses). The exported folder has NVFlare's layout:

- ``to_server`` + ``to_clients``: one app folder ``app`` (server and client configs), deployed to ``@ALL``;
- per-site ``to(obj, "site-1")``: ``app_server`` for the server and ``app_site-1``, ... for the sites.
  Sites named this way that also got ``to_clients`` components receive both (the ``@ALL`` ones first).

Component ids are unique within what one site runs: controllers get ``controller`` (then ``controller_1``,
...), executors ``executor``, other components their class name in snake case (``MyModel`` -> ``my_model``),
unless an ``id`` is given.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..apis.executor import Executor
from ..apis.filter import Filter
from ..apis.fl_constant import JobConstants, SiteType
from ..apis.impl.controller import Controller
from ..errors import ConfigError
from .defs import FilterType
from .exporter import ModuleCollector, record_component, snake_id, to_config_value

_log = logging.getLogger("flarelite.job_config")

SPECIAL_CHARACTERS = '"!@#$%^&*()+?=,<>/\\'
APP_FOLDER_TYPES = ("custom", "config")
_RESERVED_APP_KEYS = {
    "format_version",
    "workflows",
    "executors",
    "components",
    "task_data_filters",
    "task_result_filters",
}
_RESERVED_META_KEYS = {"name", "min_clients", "mandatory_clients", "deploy_map"}
DEAD_CLIENT_GRACE_PERIOD = "dead_client_grace_period"
_FILTER_CHAINS = {FilterType.TASK_DATA: "task_data_filters", FilterType.TASK_RESULT: "task_result_filters"}


def validate_target_name(target: Any) -> None:
    """Raise ValueError unless ``target`` is ``"server"``, ``"@ALL"`` or a usable site name."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target must be 'server', '@ALL' or a site name such as 'site-1', got {target!r}")
    if target == SiteType.ALL:
        return
    bad = sorted({c for c in target if c in SPECIAL_CHARACTERS or c.isspace()})
    if bad:
        raise ValueError(f"target name {target!r} contains invalid characters {bad}")


class JobCtx:
    """What ``FedJob.to`` passes to ``add_to_fed_job``: the object, its target and the id asked for (or None)."""

    def __init__(self, obj: Any, target: str, comp_id: str | None) -> None:
        self.obj = obj
        self.target = target
        self.comp_id = comp_id


@dataclass
class _FileSource:
    src: str
    dest_dir: str | None = None
    folder: str = "custom"
    contents_only: bool = False  # a directory given to to(): its contents go to the folder's root


@dataclass
class _TargetApp:
    """What one target (server, @ALL, or one site) received."""

    target: str
    workflows: list[tuple[str, Any]] = field(default_factory=list)
    executors: list[tuple[str, list[str], Any]] = field(default_factory=list)
    components: list[tuple[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    files: list[_FileSource] = field(default_factory=list)
    oid_to_cid: dict[int, str] = field(default_factory=dict)
    task_data_filters: list[tuple[list[str], list[Any]]] = field(default_factory=list)  # (tasks, filters in order)
    task_result_filters: list[tuple[list[str], list[Any]]] = field(default_factory=list)

    @property
    def is_server(self) -> bool:
        return self.target == SiteType.SERVER

    def is_empty(self) -> bool:
        return not (
            self.workflows
            or self.executors
            or self.components
            or self.params
            or self.files
            or self.task_data_filters
            or self.task_result_filters
        )

    def ids(self) -> set[str]:
        return {i for i, _ in self.workflows} | {i for i, _, _ in self.executors} | {i for i, _ in self.components}


@dataclass
class _AppPlan:
    """One app folder to write: its parts (server side, client side) and where it is deployed."""

    name: str
    sites: list[str]
    server: list[_TargetApp] | None = None
    client: list[_TargetApp] | None = None


class FedJob:
    """A federated job built in Python: what runs on the server and on each client, exported as a job folder."""

    def __init__(
        self,
        name: str = "fed_job",
        min_clients: int = 1,
        mandatory_clients: list[str] | None = None,
        meta_props: dict[str, Any] | None = None,
        fail_fast: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"FedJob name must be a non-empty str, got {name!r}")
        if name in (".", "..") or "/" in name or "\\" in name or os.sep in name:
            raise ValueError(
                f"FedJob name {name!r} is used as a folder name: it must not contain path separators or be '.'/'..'"
            )
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise ValueError(f"min_clients must be a positive int, got {min_clients!r}")
        if mandatory_clients is not None:
            if not isinstance(mandatory_clients, list) or not all(isinstance(c, str) and c for c in mandatory_clients):
                raise ValueError(f"mandatory_clients must be a list of site names, got {mandatory_clients!r}")
            reserved = [c for c in mandatory_clients if c in (SiteType.SERVER, SiteType.ALL)]
            if reserved:
                raise ValueError(f"mandatory_clients must name client sites, not {reserved}")
            if len(set(mandatory_clients)) != len(mandatory_clients):
                raise ValueError(f"mandatory_clients has duplicates: {mandatory_clients}")
        if meta_props is not None:
            if not isinstance(meta_props, dict) or not all(isinstance(k, str) for k in meta_props):
                raise ValueError(f"meta_props must be a dict with str keys, got {meta_props!r}")
            clash = sorted(_RESERVED_META_KEYS & set(meta_props))
            if clash:
                raise ValueError(f"meta_props cannot set {clash}: use FedJob's own arguments (name, min_clients, ...)")
            if "resource_spec" in meta_props and not isinstance(meta_props["resource_spec"], dict):
                raise ValueError(f"meta_props['resource_spec'] must be a dict, got {meta_props['resource_spec']!r}")
            to_config_value(meta_props, "FedJob meta_props")
        if not isinstance(fail_fast, bool):
            raise ValueError(f"fail_fast must be a bool, got {fail_fast!r}")
        self.name = name
        self.min_clients = min_clients
        self.mandatory_clients = list(mandatory_clients) if mandatory_clients else None
        self.meta_props = dict(meta_props) if meta_props else {}
        self.fail_fast = fail_fast
        self._apps: dict[str, _TargetApp] = {}
        self._refs: dict[str, Any] = {}  # as_id() ids -> objects, added where an argument names them
        self._app_packages: list[str] = []
        self._new_ids: list[str] | None = None  # ids assigned during the current to() call

    # --- targets and ids --------------------------------------------------------------------------------
    @property
    def clients(self) -> list[str]:
        """The client targets used so far (site names, and ``@ALL`` after ``to_clients``)."""
        return [t for t in self._apps if t != SiteType.SERVER]

    def _site_targets(self) -> list[str]:
        return [t for t in self._apps if t not in (SiteType.SERVER, SiteType.ALL)]

    def _app(self, target: str) -> _TargetApp:
        app = self._apps.get(target)
        if app is None:
            app = self._apps[target] = _TargetApp(target)
            if target != SiteType.SERVER:
                self.set_up_client(target)
        return app

    def _app_for_ctx(self, ctx: JobCtx) -> _TargetApp:
        if not isinstance(ctx, JobCtx):
            raise TypeError(f"ctx must be the JobCtx that FedJob.to passed to add_to_fed_job, got {type(ctx).__name__}")
        validate_target_name(ctx.target)
        return self._app(ctx.target)

    def _taken_ids(self, target: str) -> set[str]:
        """Ids that ``target``'s new components must avoid: everything that ends up on the same site."""
        if target == SiteType.SERVER:
            app = self._apps.get(target)
            return app.ids() if app else set()
        if target == SiteType.ALL:
            return set().union(*(a.ids() for t, a in self._apps.items() if t != SiteType.SERVER))
        return set().union(*(self._apps[t].ids() for t in (target, SiteType.ALL) if t in self._apps))

    def _new_id(self, app: _TargetApp, requested: str | None, default: str, obj: Any) -> str:
        taken = self._taken_ids(app.target)
        if requested is not None:
            if not isinstance(requested, str) or not requested:
                raise ValueError(f"id must be a non-empty str, got {requested!r}")
            if requested in taken:
                raise ConfigError(
                    f"id {requested!r} is already used on {app.target!r}; give {type(obj).__name__} another id "
                    "(ids must be unique among the components a site runs)"
                )
            cid = requested
        else:
            cid, n = default, 0
            while cid in taken:
                n += 1
                cid = f"{default}_{n}"
        if self._new_ids is not None:
            self._new_ids.append(cid)
        return cid

    def _check_recordable(self, obj: Any, cid: str, target: str) -> None:
        """Record ``obj`` once now, so an unrecordable component fails at ``to()`` rather than at export."""
        record_component(obj, f"{type(obj).__name__} (id {cid!r} on {target!r})")

    # --- end-user API -----------------------------------------------------------------------------------
    def to(self, obj: Any, target: str, id: str | None = None, **kwargs: Any) -> Any:
        """Assign ``obj`` to ``target`` ("server", a site name or "@ALL"); return its component id.

        A ``str`` is a file or directory for the target's ``custom/`` folder (a directory's contents are
        copied); a ``dict`` holds app parameters written at the top level of the target's app config.
        An object with ``add_to_fed_job(job, ctx, **kwargs)`` adds itself (executors take ``tasks=[...]``,
        filters ``filter_type=FilterType.X`` and ``tasks=[...]``); any other object is added as a component.

        Raises:
            ValueError: invalid target or object; ConfigError (a ValueError) when the object cannot be
                recorded in a job config; TypeError when the object cannot run on that kind of target.
        """
        validate_target_name(target)
        if obj is None:
            raise ValueError("cannot add None to the job")
        if isinstance(obj, (str, dict)) and kwargs:
            what = "a file or directory" if isinstance(obj, str) else "app parameters"
            raise TypeError(f"to(): unexpected keyword arguments {sorted(kwargs)} for {what}")
        get_type = getattr(obj, "get_job_target_type", None)
        if not isinstance(obj, (str, dict)) and callable(get_type):
            expected, target_is_server = get_type(), target == SiteType.SERVER
            if expected == SiteType.CLIENT and target_is_server:
                raise TypeError(
                    f"{type(obj).__name__} can only run on client sites, not on the server; "
                    "use job.to_clients(obj) or job.to(obj, 'site-1')"
                )
            if expected == SiteType.SERVER and not target_is_server:
                raise TypeError(
                    f"{type(obj).__name__} can only run on the server, not on {target!r}; use job.to_server(obj)"
                )
        created = target not in self._apps
        outer = self._new_ids is None
        if outer:
            self._new_ids = []
        try:
            if isinstance(obj, str):
                self._add_resource(self._app(target), obj)
                return None
            if isinstance(obj, dict):
                self._add_params(self._app(target), obj)
                return None
            add_to_fed_job = getattr(obj, "add_to_fed_job", None)
            if callable(add_to_fed_job):
                result = add_to_fed_job(self, JobCtx(obj, target, id), **kwargs)
            else:
                if kwargs:
                    raise TypeError(
                        f"to(): unexpected keyword arguments {sorted(kwargs)} for {type(obj).__name__} "
                        "(only objects with add_to_fed_job take extra arguments)"
                    )
                result = self.add_component(id, obj, JobCtx(obj, target, id))
            self._add_referenced_components(obj, target)
            if result is None and self._new_ids:
                result = self._new_ids[0]
            return result
        except BaseException:
            app = self._apps.get(target)
            if created and app is not None and app.is_empty():
                del self._apps[target]  # a failed first to() leaves no empty app behind
            raise
        finally:
            if outer:
                self._new_ids = None

    def to_server(self, obj: Any, id: str | None = None, **kwargs: Any) -> Any:
        """Assign ``obj`` to the server; return its id. Executors are rejected (they run on clients)."""
        if isinstance(obj, Executor):
            raise TypeError(
                f"{type(obj).__name__} is an Executor: executors run on client sites, not on the server; "
                "use job.to_clients(executor) or job.to(executor, 'site-1')"
            )
        return self.to(obj, SiteType.SERVER, id=id, **kwargs)

    def to_clients(self, obj: Any, id: str | None = None, **kwargs: Any) -> Any:
        """Assign ``obj`` to every client site (target ``@ALL``); return its id. Controllers are rejected."""
        if isinstance(obj, Controller):
            raise TypeError(
                f"{type(obj).__name__} is a Controller: controllers run on the server; "
                "use job.to_server(controller) or job.to(controller, 'server')"
            )
        return self.to(obj, SiteType.ALL, id=id, **kwargs)

    def as_id(self, obj: Any) -> str:
        """Return the id ``obj`` got in this job; for an object not added yet, a new id that adds it where referenced.

        An object not added yet gets a unique id (as in NVFlare); pass that id as an argument of another
        component and ``obj`` is added, under that id, to every target that component goes to.
        """
        ids = {a.oid_to_cid[id(obj)] for a in self._apps.values() if id(obj) in a.oid_to_cid}
        if len(ids) == 1:
            return ids.pop()
        for ref_id, ref in self._refs.items():
            if ref is obj:
                return ref_id
        ref_id = str(uuid.uuid4())
        self._refs[ref_id] = obj
        return ref_id

    def add_file_to(
        self, src_path: str, target: str, dest_dir: str | None = None, app_folder_type: str | None = None
    ) -> None:
        """Copy the file or directory ``src_path`` into ``target``'s app folder (``custom/`` unless told ``config``)."""
        validate_target_name(target)
        folder = app_folder_type or "custom"
        if folder not in APP_FOLDER_TYPES:
            raise ValueError(f"app_folder_type must be one of {APP_FOLDER_TYPES} or None, got {app_folder_type!r}")
        if dest_dir is not None:
            if (
                not isinstance(dest_dir, str)
                or os.path.isabs(dest_dir)
                or ".." in dest_dir.replace("\\", "/").split("/")
            ):
                raise ValueError(f"dest_dir must be a relative folder inside the app folder, got {dest_dir!r}")
        src = self._existing_path(src_path, "add_file_to")
        self._app(target).files.append(_FileSource(src, dest_dir, folder))

    def add_file_to_server(
        self, src_path: str, dest_dir: str | None = None, app_folder_type: str | None = None
    ) -> None:
        """Copy ``src_path`` into the server's app folder."""
        self.add_file_to(src_path, SiteType.SERVER, dest_dir, app_folder_type)

    def add_file_to_clients(
        self, src_path: str, dest_dir: str | None = None, app_folder_type: str | None = None
    ) -> None:
        """Copy ``src_path`` into every client's app folder."""
        self.add_file_to(src_path, SiteType.ALL, dest_dir, app_folder_type)

    def set_app_packages(self, app_packages: list[str]) -> None:
        """Name packages whose code is not copied to ``custom/`` (they are installed on the sites)."""
        if not isinstance(app_packages, list) or not all(isinstance(p, str) and p for p in app_packages):
            raise ValueError(f"app_packages must be a list of package names, got {app_packages!r}")
        self._app_packages = list(app_packages)

    def set_up_client(self, target: str) -> None:
        """Hook called when a client target is first used (for subclasses); does nothing here."""

    # --- API for component authors (called from add_to_fed_job) --------------------------------------------
    def add_component(self, comp_id: str | None, obj: Any, ctx: JobCtx) -> str:
        """Add ``obj`` as a component of ``ctx.target``; return its id (the same object is added once)."""
        app = self._app_for_ctx(ctx)
        existing = app.oid_to_cid.get(id(obj))
        if existing is not None:
            return existing
        cid = self._new_id(app, comp_id or ctx.comp_id, snake_id(type(obj).__name__), obj)
        self._check_recordable(obj, cid, app.target)
        app.components.append((cid, obj))
        app.oid_to_cid[id(obj)] = cid
        self._add_referenced_components(obj, app.target)
        return cid

    def add_controller(self, obj: Controller, ctx: JobCtx, **kwargs: Any) -> str:
        """Add a controller: a workflow on the server, a plain component on a client target; return its id."""
        if kwargs:
            raise TypeError(f"{type(obj).__name__}: unexpected keyword arguments {sorted(kwargs)} for a controller")
        app = self._app_for_ctx(ctx)
        if not app.is_server:
            return self.add_component(ctx.comp_id, obj, ctx)
        cid = self._new_id(app, ctx.comp_id, "controller", obj)
        self._check_recordable(obj, cid, app.target)
        app.workflows.append((cid, obj))
        app.oid_to_cid.setdefault(id(obj), cid)
        return cid

    def add_executor(self, obj: Executor, tasks: list[str] | None, ctx: JobCtx) -> str:
        """Add an executor for ``tasks`` (None or empty: every task, ``["*"]``) to a client target; return its id."""
        app = self._app_for_ctx(ctx)
        if app.is_server:
            raise TypeError(f"{type(obj).__name__} is an executor: executors run on client sites, not on the server")
        if not tasks:
            tasks = ["*"]
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
            raise TypeError(f"tasks must be a list of task names (or ['*']), got {tasks!r}")
        dup = sorted({t for _, ts, _ in app.executors for t in ts} & set(tasks))
        if dup:
            raise ConfigError(f"{type(obj).__name__}: tasks {dup} already have an executor on {app.target!r}")
        cid = self._new_id(app, ctx.comp_id, "executor", obj)
        self._check_recordable(obj, cid, app.target)
        app.executors.append((cid, list(tasks), obj))
        app.oid_to_cid.setdefault(id(obj), cid)
        return cid

    def add_filter(self, obj: Filter, filter_type: str, tasks: list[str] | None, ctx: JobCtx) -> None:
        """Add ``obj`` to ``ctx.target``'s task data or task result filters for ``tasks`` (None or empty: ``["*"]``).

        Filters added for the same set of tasks run in the order added. The task sets of one chain in one app
        (a site's own filters and the ``@ALL`` ones end up in the same app) must be equal or disjoint.

        Raises:
            ValueError: ``filter_type`` is not ``FilterType.TASK_DATA`` or ``FilterType.TASK_RESULT``, or
                ``tasks`` is not a list of task names.
            TypeError: ``obj`` is not a Filter.
            RuntimeError: ``tasks`` overlaps a task set that already has filters in that chain without being equal.
            ConfigError: the filter cannot be recorded in a job config.
        """
        app = self._app_for_ctx(ctx)
        name = type(obj).__name__
        if not isinstance(obj, Filter):
            raise TypeError(f"{name} is not a Filter (flarelite.apis.filter.Filter); only filters go in filter chains")
        chain = _FILTER_CHAINS.get(filter_type) if isinstance(filter_type, str) else None
        if chain is None:
            raise ValueError(
                f"invalid filter_type {filter_type!r} for {name} on {app.target!r}: use FilterType.TASK_DATA "
                f"({FilterType.TASK_DATA!r}) or FilterType.TASK_RESULT ({FilterType.TASK_RESULT!r})"
            )
        if not tasks:
            tasks = ["*"]
        if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(f"{name}: tasks must be a list of task names (or patterns such as '*'), got {tasks!r}")
        wanted = list(dict.fromkeys(tasks))
        if app.is_server:
            neighbours = [app]
        elif app.target == SiteType.ALL:
            neighbours = [a for t, a in self._apps.items() if t != SiteType.SERVER]
        else:
            neighbours = [a for a in (app, self._apps.get(SiteType.ALL)) if a is not None]
        for other in neighbours:
            for task_set, _ in getattr(other, chain):
                if set(task_set) != set(wanted) and set(task_set) & set(wanted):
                    where = "" if other is app else f" (on {other.target!r}, which shares an app with {app.target!r})"
                    raise RuntimeError(
                        f"cannot add {name} to the {chain} of {app.target!r} for tasks {wanted}: they overlap the "
                        f"task set {sorted(task_set)} that already has filters{where}; the task sets of one chain "
                        "must be equal (its filters then run in the order added) or disjoint"
                    )
        record_component(obj, f"{name} ({chain} for tasks {wanted} on {app.target!r})")
        entries = getattr(app, chain)
        for task_set, filters in entries:
            if set(task_set) == set(wanted):
                filters.append(obj)
                return
        entries.append((wanted, [obj]))

    def add_resources(self, resources: list[str], ctx: JobCtx) -> None:
        """Add files or directories to ``ctx.target``'s ``custom/`` folder."""
        app = self._app_for_ctx(ctx)
        for resource in resources:
            self._add_resource(app, resource)

    def add_file_source(self, src_path: str, dest_dir: str | None, app_folder_type: str | None, ctx: JobCtx) -> None:
        """Add a file or directory to ``ctx.target``'s app folder."""
        self._app_for_ctx(ctx)
        self.add_file_to(src_path, ctx.target, dest_dir, app_folder_type)

    def add_params(self, args: dict[str, Any], ctx: JobCtx) -> None:
        """Add top-level parameters to ``ctx.target``'s app config."""
        self._add_params(self._app_for_ctx(ctx), args)

    # --- helpers ----------------------------------------------------------------------------------------
    @staticmethod
    def _existing_path(path: Any, what: str) -> str:
        if not isinstance(path, str) or not path:
            raise ValueError(f"{what}: expected the path of a file or directory, got {path!r}")
        full = os.path.abspath(path)
        if not os.path.exists(full):
            raise ConfigError(f"{what}: {path!r} does not exist (resolved to {full})")
        return full

    def _add_resource(self, app: _TargetApp, resource: str) -> None:
        src = self._existing_path(resource, f"to({resource!r}, {app.target!r})")
        app.files.append(_FileSource(src, contents_only=os.path.isdir(src)))

    @staticmethod
    def _add_params(app: _TargetApp, params: dict[str, Any]) -> None:
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ValueError(f"app parameters must be a dict with str keys, got {params!r}")
        clash = sorted(_RESERVED_APP_KEYS & set(params))
        if clash:
            raise ConfigError(f"app parameters cannot set {clash}: these keys are the app config's own")
        to_config_value(params, f"app parameters for {app.target!r}")
        app.params.update(params)

    def _add_referenced_components(self, obj: Any, target: str) -> None:
        """Add the as_id() objects that ``obj``'s arguments name to ``target`` (recursively)."""
        if not self._refs or isinstance(obj, (str, dict)):
            return
        try:
            args = record_component(obj, type(obj).__name__)["args"]
        except ConfigError:
            return  # reported when the object itself is added
        app = self._app(target)
        for value in _strings(args):
            ref = self._refs.get(value)
            if ref is not None and id(ref) not in app.oid_to_cid:
                if value in self._taken_ids(target):
                    raise ConfigError(f"id {value!r} is already used on {target!r}")
                self._check_recordable(ref, value, target)
                app.components.append((value, ref))
                app.oid_to_cid[id(ref)] = value
                self._add_referenced_components(ref, target)

    # --- export -----------------------------------------------------------------------------------------
    def _plan(self) -> list[_AppPlan]:
        server = self._apps.get(SiteType.SERVER)
        everyone = self._apps.get(SiteType.ALL)
        sites = [self._apps[t] for t in self._site_targets()]
        if server is None and everyone is None and not sites:
            raise ConfigError(
                f"job {self.name!r} is empty: add components with job.to_server(), job.to_clients() or job.to()"
            )
        plans: list[_AppPlan] = []
        if everyone is not None:
            if server is None:
                raise ConfigError(
                    f"job {self.name!r} has client components (to_clients) but nothing for the server; "
                    "add a controller with job.to_server(controller)"
                )
            plans.append(_AppPlan("app", [SiteType.ALL], server=[server], client=[everyone]))
            plans.extend(_AppPlan(f"app_{s.target}", [s.target], client=[everyone, s]) for s in sites)
        else:
            if server is not None:
                plans.append(_AppPlan("app_server", [SiteType.SERVER], server=[server]))
            plans.extend(_AppPlan(f"app_{s.target}", [s.target], client=[s]) for s in sites)
        return plans

    def _server_config(self, parts: list[_TargetApp], modules: set[str]) -> dict[str, Any]:
        config: dict[str, Any] = {"format_version": 2, "workflows": [], "components": []}
        for part in parts:
            for cid, obj in part.workflows:
                config["workflows"].append({"id": cid, **record_component(obj, _where(obj, cid, part), modules)})
        config["components"] = self._components(parts, modules)
        config.update(self._filters(parts, modules, "the server app"))
        params: dict[str, Any] = {DEAD_CLIENT_GRACE_PERIOD: 0} if self.fail_fast else {}
        for part in parts:
            params.update(part.params)
        config.update(to_config_value(params, "server app parameters", modules))
        return config

    def _client_config(self, parts: list[_TargetApp], modules: set[str], app_name: str) -> dict[str, Any]:
        entries = [(cid, tasks, obj, part) for part in parts for cid, tasks, obj in part.executors]
        seen: dict[str, str] = {}
        for cid, tasks, _, part in entries:
            for task in tasks:
                if task in seen:
                    raise ConfigError(
                        f"app {app_name!r}: task {task!r} has two executors ({seen[task]} and {cid!r} on "
                        f"{part.target!r}); give each executor its own tasks=[...]"
                    )
                seen[task] = repr(cid)
        executors = []
        for cid, tasks, obj, part in entries:
            entry: dict[str, Any] = {}
            if not (len(entries) == 1 and cid == "executor"):  # the runtime's default id otherwise
                entry["id"] = cid
            entry["tasks"] = list(tasks)
            entry["executor"] = record_component(obj, _where(obj, cid, part), modules)
            executors.append(entry)
        config: dict[str, Any] = {"format_version": 2, "executors": executors}
        config["components"] = self._components(parts, modules)
        config.update(self._filters(parts, modules, f"app {app_name!r}"))
        params: dict[str, Any] = {}
        for part in parts:
            params.update(part.params)
        config.update(to_config_value(params, "client app parameters", modules))
        return config

    @staticmethod
    def _components(parts: list[_TargetApp], modules: set[str]) -> list[dict[str, Any]]:
        return [
            {"id": cid, **record_component(obj, _where(obj, cid, part), modules)}
            for part in parts
            for cid, obj in part.components
        ]

    @staticmethod
    def _filters(parts: list[_TargetApp], modules: set[str], app_label: str) -> dict[str, list[dict[str, Any]]]:
        """Return the apps' filter chains as NVFlare writes them: ``[{"tasks": [...], "filters": [{path, args}]}]``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for chain in _FILTER_CHAINS.values():
            merged: list[tuple[list[str], list[tuple[Any, _TargetApp]]]] = []
            for part in parts:
                for tasks, filters in getattr(part, chain):
                    for merged_tasks, merged_filters in merged:
                        if set(merged_tasks) == set(tasks):
                            merged_filters.extend((f, part) for f in filters)
                            break
                        if set(merged_tasks) & set(tasks):
                            raise ConfigError(
                                f"{app_label}: the {chain} task sets {sorted(merged_tasks)} and {sorted(tasks)} "
                                f"(on {part.target!r}) overlap; make them equal or disjoint"
                            )
                    else:
                        merged.append((list(tasks), [(f, part) for f in filters]))
            out[chain] = [
                {
                    "tasks": list(tasks),
                    "filters": [
                        record_component(f, f"{type(f).__name__} ({chain} for tasks {tasks} on {p.target!r})", modules)
                        for f, p in filters
                    ],
                }
                for tasks, filters in merged
            ]
        return out

    def _write_app(self, job_dir: str, plan: _AppPlan) -> None:
        app_dir = os.path.join(job_dir, plan.name)
        config_dir = os.path.join(app_dir, "config")
        custom_dir = os.path.join(app_dir, "custom")
        os.makedirs(config_dir)
        modules: set[str] = set()
        parts: list[_TargetApp] = []
        if plan.server is not None:
            _write_json(
                os.path.join(config_dir, JobConstants.SERVER_JOB_CONFIG), self._server_config(plan.server, modules)
            )
            parts.extend(plan.server)
        if plan.client is not None:
            config = self._client_config(plan.client, modules, plan.name)
            _write_json(os.path.join(config_dir, JobConstants.CLIENT_JOB_CONFIG), config)
            parts.extend(plan.client)
        for rel, src in sorted(ModuleCollector(self._app_packages).collect(modules).items()):
            dest = os.path.join(custom_dir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(src, dest)
        for part in parts:
            for fs in part.files:
                _copy_source(fs, app_dir)

    def export_job(self, job_root: str) -> str:
        """Write the job folder ``<job_root>/<name>`` (meta.json and its app folders); return its path.

        An existing job folder of the same name is replaced.

        Raises:
            ConfigError: the job is empty or inconsistent, a component cannot be recorded, or the folder
                exists and is not a job folder.
        """
        if not isinstance(job_root, (str, os.PathLike)) or not str(job_root):
            raise ValueError(f"job_root must be a folder path, got {job_root!r}")
        plans = self._plan()
        job_dir = os.path.join(os.path.abspath(os.fspath(job_root)), self.name)
        if os.path.exists(job_dir):
            if not os.path.isdir(job_dir) or (
                os.listdir(job_dir) and not os.path.isfile(os.path.join(job_dir, JobConstants.META_FILE))
            ):
                raise ConfigError(
                    f"cannot export job {self.name!r}: {job_dir} exists and is not a job folder; "
                    "remove it or pick another job_root"
                )
            shutil.rmtree(job_dir)
        os.makedirs(job_dir)
        for plan in plans:
            self._write_app(job_dir, plan)
        meta: dict[str, Any] = {
            "name": self.name,
            "resource_spec": {},
            "min_clients": self.min_clients,
            "deploy_map": {plan.name: plan.sites for plan in plans},
        }
        if self.mandatory_clients:
            meta["mandatory_clients"] = list(self.mandatory_clients)
        meta.update(self.meta_props)
        _write_json(os.path.join(job_dir, JobConstants.META_FILE), meta)
        try:
            from .models import load_job  # pydantic loads only when a job is exported

            load_job(job_dir)
        except ConfigError as exc:
            raise ConfigError(f"the exported job {job_dir} does not validate (a flarelite bug): {exc}") from exc
        return job_dir

    # --- simulator --------------------------------------------------------------------------------------
    def simulator_run(
        self,
        workspace: str,
        n_clients: int | None = None,
        clients: list[str] | None = None,
        threads: int | None = None,
        gpu: str | None = None,
        log_config: str | None = None,
        *,
        protocol: str = "unix",
        tls: str = "clear",
        direct_p2p: bool = False,
        connect_timeout: float = 60.0,
        allowed_classes: list[str] | None = None,
        max_message_size: int | str | None = None,
        data_plane: str = "auto",
        max_clients: int | None = None,
        max_blocked_sites: int | None = None,
    ) -> int:
        """Export the job to a temporary folder and run it in the simulator; return 0 when the run succeeds.

        ``n_clients`` names the sites ``site-1..site-N`` for a job built with ``to_clients``; it cannot be used
        with per-site ``to()`` targets. ``threads`` (default: ``n_clients``, i.e. every site) is how many sites
        execute a task at once; fewer make the sites take turns (a synchronous peer-to-peer job needs every site
        at once). ``gpu`` (``"0,1"`` or ``"[0,1],[2]"``) gives each site process its ``CUDA_VISIBLE_DEVICES``, round
        robin over the groups (not with ``protocol="memory"``). ``log_config``: ``"concise"``, ``"full"``,
        ``"verbose"``, a level name, or the path of a JSON logging dict config, applied here and in every site
        process (see ``flarelite.simulator.options``). ``protocol``:
        ``"unix"`` (default: one process per site, gRPC over a Unix socket), ``"grpc"`` (processes, gRPC over
        TCP loopback) or ``"memory"`` (every site in this process); ``tls``: ``"clear"``, ``"tls"`` or ``"mtls"``;
        ``direct_p2p``: sites talk to each other directly instead of through the server (gRPC protocols);
        ``connect_timeout``: seconds each site waits for the server at start (it says so every few seconds).
        The sites build the classes of the objects this script put in the job (and flarelite's, and its custom/
        modules'); ``allowed_classes`` adds class paths or module prefixes for anything else a config names.
        ``max_message_size``: the largest message a site accepts, in bytes or as a size like ``"64M"`` (binary
        units; default 2 GiB); a larger one fails with a clear error at its sender or its receiver.
        ``data_plane``: ``"auto"`` (default: with ``protocol="unix"``, frames between each site and the server take
        a data channel beside gRPC) or ``"grpc"`` (gRPC only). ``max_clients`` (default 100): more sites is an
        error. ``max_blocked_sites`` (``protocol="memory"``, default 1,000): the sites share bounded thread pools
        and at most this many execute a task at once (see ``run_simulation``).

        Raises:
            ValueError: invalid arguments, or ``n_clients`` given for a job with per-site targets.
            ConfigError: the job cannot be exported or run as configured.
            RunFailedError: the run failed.
        """
        if not isinstance(workspace, (str, os.PathLike)) or not str(workspace):
            raise ValueError(f"workspace must be a folder path, got {workspace!r}")
        if n_clients is not None:
            if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
                raise ValueError(f"n_clients must be a positive int, got {n_clients!r}")
            if self._site_targets():
                raise ValueError(
                    f"this job already names its client sites with to() ({self._site_targets()}); "
                    "don't pass n_clients to simulator_run (or build the job with to_clients)"
                )
        if isinstance(clients, str):
            clients = [c.strip() for c in clients.split(",") if c.strip()]
        if clients is not None and (
            not isinstance(clients, list) or not all(isinstance(c, str) and c for c in clients)
        ):
            raise ValueError(f"clients must be a list of site names, got {clients!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")
        from ..simulator.options import check_log_config, parse_gpu
        from ..simulator.runner import run_simulation  # the simulator imports job_config: import it late

        if gpu is not None:
            parse_gpu(gpu)  # ConfigError (a ValueError) before the job is exported
        if log_config is not None:
            log_config = check_log_config(log_config)

        limits = {"max_clients": max_clients, "max_blocked_sites": max_blocked_sites}
        with tempfile.TemporaryDirectory(prefix="flarelite_job_") as tmp:
            job_dir = self.export_job(tmp)
            try:
                return run_simulation(
                    job_dir,
                    os.fspath(workspace),
                    n_clients=n_clients,
                    clients=clients,
                    threads=threads,
                    protocol=protocol,
                    tls=tls,
                    direct_p2p=direct_p2p,
                    connect_timeout=connect_timeout,
                    allowed_classes=[*(allowed_classes or []), *_recorded_classes(job_dir)],
                    temp_dirs=[tmp],
                    max_message_size=max_message_size,
                    gpu=gpu,
                    log_config=log_config,
                    data_plane=data_plane,
                    **{k: v for k, v in limits.items() if v is not None},
                )
            finally:
                _forget_folder(os.path.realpath(tmp))


def _where(obj: Any, cid: str, part: _TargetApp) -> str:
    return f"{type(obj).__name__} (id {cid!r} on {part.target!r})"


def _recorded_classes(job_dir: str) -> list[str]:
    """The classes the job's own objects were recorded as, outside flarelite and custom/ (simulator_run's sites
    build them: the user's script put them in the job, so its user is the operator who allows them)."""
    found: set[str] = set()
    for app in sorted(os.listdir(job_dir)):
        config_dir = os.path.join(job_dir, app, "config")
        custom = os.path.join(job_dir, app, "custom")
        for name in (JobConstants.SERVER_JOB_CONFIG, JobConstants.CLIENT_JOB_CONFIG):
            path = os.path.join(config_dir, name)
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                stack = [json.load(f)]
            while stack:
                value = stack.pop()
                if isinstance(value, dict):
                    if isinstance(value.get("path"), str) and set(value) <= {"path", "args", "id", "name"}:
                        top = value["path"].split(".")[0]
                        in_custom = os.path.exists(os.path.join(custom, top + ".py")) or os.path.isdir(
                            os.path.join(custom, top)
                        )
                        if top != "flarelite" and not in_custom:
                            found.add(value["path"])
                    stack.extend(value.values())
                elif isinstance(value, list):
                    stack.extend(value)
    return sorted(found)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _copy_source(fs: _FileSource, app_dir: str) -> None:
    dest_root = os.path.join(app_dir, fs.folder, fs.dest_dir or "")
    os.makedirs(dest_root, exist_ok=True)
    if fs.contents_only:
        shutil.copytree(fs.src, dest_root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    elif os.path.isdir(fs.src):
        dest = os.path.join(dest_root, os.path.basename(fs.src.rstrip(os.sep)))
        shutil.copytree(fs.src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copyfile(fs.src, os.path.join(dest_root, os.path.basename(fs.src)))


def _forget_folder(folder: str) -> None:
    """Drop sys.path entries and loaded modules that point into ``folder`` (a job folder about to be deleted)."""

    def inside(path: Any) -> bool:
        if not isinstance(path, str) or not path:
            return False
        real = os.path.realpath(path)
        return real == folder or real.startswith(folder + os.sep)

    sys.path[:] = [p for p in sys.path if not inside(p)]
    for name, module in list(sys.modules.items()):
        if inside(getattr(module, "__file__", None)):
            del sys.modules[name]
