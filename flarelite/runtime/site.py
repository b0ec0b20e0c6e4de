"""SiteRuntime: what the server and client engines share (contexts, events, components, aux, frames)."""

from __future__ import annotations

import threading
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..apis.engine_spec import EngineSpec
from ..apis.fl_component import FLComponent
from ..apis.fl_constant import ReservedKey, SiteType
from ..apis.fl_context import FLContext, FLContextManager
from ..apis.shareable import Shareable
from ..apis.signal import Signal
from ..apis.workspace import Workspace
from ..communication.protocol import CommunicationProtocol, Frame
from .aux import AuxRunner, resolve_targets
from .fed_events import FedEventReceiver
from .frames import Kind
from .logs import SiteLogger, bind_thread
from .pool import SharedThreads

SENDER_THREADS = 8  # frames to several sites that may each have to wait go out on this many threads


class SiteNames(tuple):
    """The names of a run's sites in order, with O(1) membership; immutable, so the sites of one process can
    share one (10,000 simulated sites hold one list of 10,000 names, not 10,000 of them)."""

    def __new__(cls, names: Any = ()) -> SiteNames:
        self = super().__new__(cls, names)
        self._set = frozenset(self)
        return self

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._set
        except TypeError:  # an unhashable value is no site's name
            return False


class SiteRuntime(EngineSpec):
    """The engine of one site: its components, its contexts, its aux channel and its transport endpoint."""

    def __init__(
        self,
        *,
        name: str,
        job_id: str,
        protocol: CommunicationProtocol,
        run_dir: str,
        workspace_root: str,
        aux_workers: int = 16,
        app_dir: str | None = None,
        threads: SharedThreads | None = None,
    ) -> None:
        self.name = name
        self.threads = threads  # pools shared with other sites of this process (None: threads of its own)
        self.job_id = job_id
        self.protocol = protocol
        self.run_dir = run_dir
        self.workspace_root = workspace_root
        self.workspace = Workspace(workspace_root, name, run_dir, app_dir)
        self.abort_signal = Signal()
        self.components: dict[str, Any] = {}
        self.sites: SiteNames = SiteNames([SiteType.SERVER])
        self.failure: str | None = None
        self._failures: list[str] = []
        self._failure_lock = threading.Lock()
        self.log = SiteLogger(f"flarelite.{type(self).__name__}", name, job_id)
        self._ctx_manager = FLContextManager(
            engine=self,
            identity_name=name,
            job_id=job_id,
            private_stickers={
                ReservedKey.RUN_ABORT_SIGNAL: self.abort_signal,
                ReservedKey.WORKSPACE_OBJECT: self.workspace,
                ReservedKey.WORKSPACE_ROOT: workspace_root,
                ReservedKey.APP_ROOT: run_dir,
            },
        )
        self.aux = AuxRunner(self, max_workers=aux_workers)
        self.fed_events = FedEventReceiver(self)  # topic "fed.event": federated events from the other sites
        self.fed_events.register()
        self.tensor_device: Any = None  # where received torch tensors go (None: the CPU)
        self._sender_pool: ThreadPoolExecutor | None = None
        self._sender_lock = threading.Lock()

    def adopt_job_id(self, job_id: str) -> None:
        """Take the job id the server runs (a site that joined without a job of its own learns it on welcome)."""
        self.job_id = job_id
        self._ctx_manager._set_sticky(ReservedKey.RUN_NUM, job_id, 0b10)  # public, sticky
        self.log.prefix = f"[identity={self.name}, run={job_id}]"

    # contexts, events, components ---------------------------------------------------------------------
    def new_context(self) -> FLContext:
        """Return a new FLContext for this site."""
        return self._ctx_manager.new_context()

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Fire ``event_type`` to every component; a handler that raises is logged and the others still run."""
        self._fire(event_type, fl_ctx)

    def _fire(self, event_type: str, fl_ctx: FLContext) -> list[tuple[str, BaseException]]:
        errors: list[tuple[str, BaseException]] = []
        for cid, comp in list(self.components.items()):
            if not isinstance(comp, FLComponent):
                continue
            try:
                comp._dispatch_event(event_type, fl_ctx)
            except Exception as exc:
                self.log.exception(
                    "component %r (%s) raised while handling event %s", cid, type(comp).__name__, event_type
                )
                errors.append((cid, exc))
        return errors

    def fire_required(self, event_type: str, fl_ctx: FLContext) -> None:
        """Fire ``event_type``; raise RuntimeError naming the component if any handler raised."""
        errors = self._fire(event_type, fl_ctx)
        if errors:
            cid, exc = errors[0]
            raise RuntimeError(f"component {cid!r} failed while handling {event_type}: {exc!r}") from exc

    def get_component(self, component_id: str) -> Any:
        """Return the component with this id, or None."""
        return self.components.get(component_id)

    def get_all_components(self) -> dict:
        """Return ``{id: component}``."""
        return dict(self.components)

    def get_workspace(self) -> Workspace:
        """Return this site's Workspace (its run folder and its app folder)."""
        return self.workspace

    def set_tensor_device(self, device: Any) -> None:
        """Put the torch tensors this site receives on ``device`` (None: the CPU, the default)."""
        if device is None:
            self.tensor_device = None
            return
        try:
            import torch
        except ImportError as exc:
            raise ValueError(f"set_tensor_device({device!r}) at {self.name}: torch is not installed") from exc
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"set_tensor_device at {self.name}: {device!r} is not a torch device: {exc}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"set_tensor_device({device!r}) at {self.name}: torch sees no CUDA GPU on this machine")
        self.tensor_device = dev

    # aux ---------------------------------------------------------------------------------------------
    def register_aux_message_handler(self, topic: str, message_handle_func: Any) -> None:
        """Register ``message_handle_func(topic, request, fl_ctx) -> Shareable`` for ``topic``."""
        self.aux.register(topic, message_handle_func)

    def send_aux_request(
        self,
        targets: None | str | list[str],
        topic: str,
        request: Shareable,
        timeout: float,
        fl_ctx: FLContext,
        optional: bool = False,
        secure: bool = False,
    ) -> dict[str, Shareable]:
        """Send ``request`` to ``targets`` (None / "@ALL": every other party) and return ``{site: reply}``."""
        names = resolve_targets(targets, self.name, self.sites)
        return self.aux.send({n: request for n in names}, topic, timeout, fl_ctx, optional)

    def multicast_aux_requests(
        self,
        topic: str,
        target_requests: dict[str, Shareable],
        timeout: float,
        fl_ctx: FLContext,
        optional: bool = False,
        secure: bool = False,
    ) -> dict[str, Shareable]:
        """Send each target its own request; return ``{site: reply}``."""
        if not isinstance(target_requests, dict):
            raise TypeError(
                f"target_requests must be a dict of site name -> Shareable, got {type(target_requests).__name__}"
            )
        return self.aux.send(dict(target_requests), topic, timeout, fl_ctx, optional)

    def refuse_peer(self, name: str) -> str | None:
        """Why an aux request from ``name`` may not reach this site's handlers (None: it may).

        The server's admission at hello is the gate; this is the second lock on the handlers' door.
        """
        return None

    def check_target(self, target: str) -> str | None:
        """Return why ``target`` cannot be sent to, or None if it is a site of this job."""
        if target in self.sites:
            return None
        return f"unknown target {target!r}: the sites of this job are {', '.join(self.sites)}"

    # frames ------------------------------------------------------------------------------------------
    def sender_pool(self) -> ThreadPoolExecutor:
        """The threads that send frames side by side (a broadcast's copies, an aux request's targets), so that
        a slow site delays only what goes to it; made on first use."""
        with self._sender_lock:
            if self._sender_pool is None and self.threads is not None:
                self._sender_pool = self.threads.senders(self.name)  # type: ignore[assignment]
            elif self._sender_pool is None:
                self._sender_pool = ThreadPoolExecutor(
                    max_workers=SENDER_THREADS,
                    thread_name_prefix=f"{self.name}-send",
                    initializer=bind_thread,
                    initargs=(self.name,),
                )
            return self._sender_pool

    def close_sender_pool(self) -> None:
        """Let the sender threads go (a later send makes new ones)."""
        with self._sender_lock:
            pool, self._sender_pool = self._sender_pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def send_frame(self, target: str, frame: Frame, timeout: float | None = None) -> None:
        """Stamp ``frame`` with this job and send it to ``target``, waiting at most ``timeout`` seconds for room.

        Raises:
            TransportError: the frame could not be sent (TransportTimeout when ``timeout`` ran out).
        """
        frame.job_id = self.job_id
        if timeout is None:
            self.protocol.send(target, frame)
        else:
            self.protocol.send(target, frame, timeout=timeout)

    def on_frame(self, frame: Frame) -> None:
        """Transport callback: route aux frames to the aux runner, the rest to the site's control logic."""
        kind = frame.kind
        if kind == Kind.AUX_REQUEST or kind == Kind.AUX_POST:
            self.aux.on_request(frame)
        elif kind == Kind.AUX_REPLY:
            self.aux.on_reply(frame)
        else:
            self.on_control_frame(frame)

    def on_peer(self, name: str, connected: bool) -> None:
        """Transport callback: a peer joined or left."""
        if not connected:
            self.aux.peer_down(name)

    @abstractmethod
    def on_control_frame(self, frame: Frame) -> None:
        """Handle a frame that is not aux traffic."""

    def record_failure(self, reason: str) -> bool:
        """Remember why the run failed; return True if this is the first reason (later ones are kept too)."""
        with self._failure_lock:
            if reason not in self._failures:
                self._failures.append(reason)
            if self.failure is not None:
                return False
            self.failure = reason
            return True

    def failure_summary(self, most: int = 3) -> str | None:
        """Return the failure reasons joined (the first ``most`` of them), or None when the run did not fail."""
        with self._failure_lock:
            reasons = list(self._failures)
        if not reasons:
            return None
        text = "; ".join(reasons[:most])
        return text + (f" (and {len(reasons) - most} more)" if len(reasons) > most else "")
