"""The Client API (``import flarelite.client as flare``): a training script receives models and sends updates.

Every function takes an optional trailing ``ctx`` (an ``APIContext`` from ``init``); without it the context of
the calling thread's site is used (see below). Semantics are NVFlare 2.9.0's: ``receive`` returns the same cached
model until ``send`` clears it, and None once the job is stopping; ``send`` needs a ``receive`` first and with
``clear_cache=True`` sets ``params`` and ``optimizer_params`` to None on both the sent and the received model;
``send`` and ``log`` after the job ended are dropped with a warning.

Which executor ``init`` talks to:

- ``config_file`` given: the bootstrap file of an external-process site (the channel of ``ex_process``);
- the calling thread is an in-process script's thread (or a thread it started): that site's executor;
- environment variable ``FLARELITE_CLIENT_API_BOOTSTRAP`` set: the site that launched this process;
- exactly one in-process site in this process: that one (a thread no script started).

flarelite differences: contexts are bound to the site whose script thread calls ``init`` (NVFlare 2.9.0 keeps one
process-wide default), so two sites simulated in one process never see each other's tasks. A task the server
aborts (not the job) does not make ``receive``/``send`` raise: the task's result is dropped with a warning and
the next ``receive`` gets the next task; an aborted job still raises RuntimeError. Ranks other than "0" do not
talk to the site: their ``receive``/``send``/``is_running`` raise RuntimeError, as do NVFlare's rank-0-only
functions.
"""

from __future__ import annotations

import logging
import os
import threading
from enum import Enum
from typing import Any

from flarelite.apis.analytix import AnalyticsDataType
from flarelite.app_common.abstract.fl_model import FLModel

from .api_context import APIContext
from .client_api import ClientAPI
from .constants import BOOTSTRAP_ENV, CLIENT_API_TYPE_ENV, RANK_ENV
from .thread_binding import SiteBinding, active_bindings, current_binding

_log = logging.getLogger("flarelite.client")


class ClientAPIType(Enum):
    """Which Client API engine ``init`` uses (environment variable ``CLIENT_API_TYPE``)."""

    IN_PROCESS_API = "IN_PROCESS_API"
    EX_PROCESS_API = "EX_PROCESS_API"


class _External:
    """The Client API state of this process when a site launched it (one per bootstrap file)."""

    def __init__(self, bootstrap_path: str) -> None:
        self.bootstrap_path = bootstrap_path
        self.lock = threading.RLock()
        self.contexts: dict[tuple[str, str | None], APIContext] = {}
        self.default: APIContext | None = None
        self.exchange: Any = None
        self.active = True

    def make_api(self, rank: str) -> ClientAPI:
        from .ex_process import SocketExchange, read_bootstrap

        if rank != "0":  # only rank 0 talks to the site; the others learn who they are from the bootstrap
            boot = read_bootstrap(self.bootstrap_path)
            return ClientAPI(None, rank, {"site_name": boot.get("site_name"), "job_id": boot.get("job_id")})
        if self.exchange is None:
            self.exchange = SocketExchange(self.bootstrap_path)
        return ClientAPI(self.exchange, rank)


_lock = threading.RLock()
_externals: dict[str, _External] = {}
_last: APIContext | None = None


def _rank(rank: Any) -> str:
    if rank is None:
        return os.environ.get(RANK_ENV, "0")
    if isinstance(rank, bool) or not isinstance(rank, (int, str)):
        raise ValueError(f"rank must be an int, a str or None, got {type(rank).__name__}")
    return str(rank)


def _external(path: str) -> _External:
    with _lock:
        holder = _externals.get(path)
        if holder is None:
            holder = _externals[path] = _External(path)
        return holder


def _owner(config_file: str | None) -> SiteBinding | _External:
    if config_file is not None:
        return _external(os.path.abspath(config_file))
    binding = current_binding()
    if binding is not None:
        return binding
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    if bootstrap:
        return _external(os.path.abspath(bootstrap))
    if os.environ.get(CLIENT_API_TYPE_ENV) == ClientAPIType.EX_PROCESS_API.value:
        raise RuntimeError(
            f"{CLIENT_API_TYPE_ENV} is {ClientAPIType.EX_PROCESS_API.value} but {BOOTSTRAP_ENV} is not set: this "
            "script was not started by a ClientAPIExecutor (execution_mode='external_process')"
        )
    sites = active_bindings()
    if len(sites) == 1:
        return sites[0]
    if len(sites) > 1:
        names = ", ".join(b.site_name for b in sites)
        raise RuntimeError(
            f"flare.init() was called on a thread that no training script started, and {len(sites)} sites run in "
            f"this process ({names}): call it from the script (or a thread the script started)"
        )
    raise RuntimeError(
        "api None is not a valid InProcessClientAPI: no ClientAPIExecutor runs a script in this process; "
        "flare.init() works in a training script started by ScriptRunner / ClientAPIExecutor"
    )


def init(rank: str | int | None = None, config_file: str | None = None) -> APIContext:
    """Connect this training script to its site's executor and return the context (cached per rank and config).

    Parameters:
        rank: the process's rank (None: environment variable ``RANK``, default ``"0"``); only rank 0 talks to
            the site.
        config_file: the bootstrap file of an external-process site (default: found as described above).

    Raises:
        ValueError: ``rank`` is not an int, a str or None.
        RuntimeError: no executor to talk to (outside a job), or the site cannot be reached.
    """
    global _last
    rank = _rank(rank)
    owner = _owner(config_file)
    key = (rank, config_file)
    with owner.lock:
        ctx = owner.contexts.get(key)
        if ctx is not None:
            _log.warning("flare.init(rank=%r, config_file=%r) was already called: using its context", rank, config_file)
            return ctx
        if isinstance(owner, SiteBinding):
            api = ClientAPI(owner.exchange, rank)
        else:
            api = owner.make_api(rank)
        ctx = APIContext(api, rank, config_file, owner)
        owner.contexts[key] = ctx
        owner.default = ctx
    if isinstance(owner, SiteBinding):
        owner.initialized.set()
    with _lock:
        _last = ctx
    return ctx


def get_context(ctx: APIContext | None = None) -> APIContext:
    """Return ``ctx``, or the calling thread's context (see the module docstring).

    Raises:
        RuntimeError: ``init`` was not called (for this thread's site).
    """
    if ctx is not None:
        return ctx
    binding = current_binding()
    if binding is not None:
        if binding.default is not None:
            return binding.default
    else:
        last = _last
        owner = getattr(last, "owner", None)
        if isinstance(owner, _External):
            return last  # type: ignore[return-value]
        sites = [b for b in active_bindings() if b.default is not None]
        if len(sites) == 1:
            return sites[0].default
    raise RuntimeError("APIContext is None. Did you call flare.init() before using the Client API?")


def receive(timeout: float | None = None, ctx: APIContext | None = None) -> FLModel | None:
    """Return the current task's model (blocking until a task arrives); None once the job is stopping or after
    ``timeout`` seconds.

    Raises:
        RuntimeError: the job was aborted, the task could not be converted, or ``init`` was not called.
    """
    return get_context(ctx).api.receive(timeout)


def send(model: FLModel, clear_cache: bool = True, ctx: APIContext | None = None) -> None:
    """Send ``model`` as the result of the current task.

    With the DIFF transfer type a FULL model is sent as ``new - received`` per common key (marked DIFF). With
    ``clear_cache`` (default) the cached received model is dropped and ``params``/``optimizer_params`` of both the
    sent and the received model are set to None.

    Raises:
        TypeError: ``model`` is not an FLModel.
        RuntimeError: no ``receive`` since the last send ('"receive" needs to be called before sending model!'),
            the model has neither params nor metrics, or DIFF finds no common key.
    """
    get_context(ctx).api.send(model, clear_cache)


def system_info(ctx: APIContext | None = None) -> dict:
    """Return ``{"site_name": ..., "job_id": ...}``."""
    return get_context(ctx).api.system_info()


def get_config(ctx: APIContext | None = None) -> dict:
    """Return the Client API config taken at ``init`` (its ``TASK_NAME`` is not updated: use get_task_name)."""
    return get_context(ctx).api.get_config()


def get_job_id(ctx: APIContext | None = None) -> str:
    """Return the job id (``simulate_job`` in the simulator)."""
    return get_context(ctx).api.get_job_id()


def get_site_name(ctx: APIContext | None = None) -> str:
    """Return this site's name (``site-1``...)."""
    return get_context(ctx).api.get_site_name()


def get_task_name(ctx: APIContext | None = None) -> str | None:
    """Return the current task's name (rank 0 only)."""
    return get_context(ctx).api.get_task_name()


def is_running(ctx: APIContext | None = None) -> bool:
    """Block like ``receive``; True when a task is available, False when the job is stopping."""
    return get_context(ctx).api.is_running()


def is_train(ctx: APIContext | None = None) -> bool:
    """True when the current task is the training task (rank 0 only)."""
    return get_context(ctx).api.is_train()


def is_evaluate(ctx: APIContext | None = None) -> bool:
    """True when the current task is the evaluation task (rank 0 only)."""
    return get_context(ctx).api.is_evaluate()


def is_submit_model(ctx: APIContext | None = None) -> bool:
    """True when the current task asks for a model to be submitted (rank 0 only)."""
    return get_context(ctx).api.is_submit_model()


def log(key: str, value: Any, data_type: AnalyticsDataType, ctx: APIContext | None = None, **kwargs: Any) -> None:
    """Send a metric to the executor, which fires it as an analytics event (rank 0 only).

    Invalid values are reported in the site log, never raised here; after the job ended the call is dropped
    with a warning.
    """
    get_context(ctx).api.log(key, value, data_type, **kwargs)


def clear(ctx: APIContext | None = None) -> None:
    """Drop the cached received model and the receive flag."""
    get_context(ctx).api.clear()


def shutdown(ctx: APIContext | None = None) -> None:
    """Stop this context and tell the executor this trainer is done (later tasks fail at once)."""
    get_context(ctx).api.shutdown()
