"""ClientRuntime: a client site's engine. Joins the server, builds its executors, runs tasks one at a time."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from ..apis.event_type import EventType
from ..apis.executor import Executor
from ..apis.fl_constant import FLContextKey, ReservedKey, ReturnCode, SiteType
from ..apis.fl_context import peer_context_from_props
from ..apis.shareable import ReservedHeaderKey, Shareable, make_reply
from ..apis.signal import Signal
from ..communication.protocol import CommunicationProtocol, Frame
from ..errors import CodecError, ConfigError, ConnectError, TransportError
from .allowlist import ClassPolicy
from .apps import app_custom_dir, custom_code_refusal, install_app
from .components import build_component
from .filters import FilterChainType, FilterError, SiteFilters
from .frames import Kind, frame_payload, frame_shareable, make_frame
from .logs import bind_thread
from .pool import Lane, SharedThreads
from .site import SiteNames, SiteRuntime

_END = object()


class _SiteLists:
    """The site lists of the last few welcome/start bodies decoded in this process, by body: the sites of an
    in-process simulation all get the same body and share one decoded list instead of each decoding its own."""

    def __init__(self, size: int = 4) -> None:
        self._lock = threading.Lock()
        self._lists: OrderedDict[bytes, SiteNames] = OrderedDict()
        self._size = size

    def get(self, meta: bytes) -> SiteNames | None:
        with self._lock:
            return self._lists.get(meta)

    def put(self, meta: bytes, sites: SiteNames) -> None:
        with self._lock:
            self._lists[meta] = sites
            while len(self._lists) > self._size:
                self._lists.popitem(last=False)


_site_lists = _SiteLists()
KEPT_RESULTS = 2  # the latest results kept to answer a task the server sends again after a lost connection


class ClientRuntime(SiteRuntime):
    """The engine of a client site; ``run()`` drives its whole run on the calling thread."""

    def __init__(
        self,
        *,
        name: str,
        job_id: str,
        protocol: CommunicationProtocol,
        run_dir: str,
        workspace_root: str,
        app_config: dict | None,
        join_timeout: float = 60.0,
        drain_timeout: float = 10.0,
        server_lost_timeout: float = 60.0,
        aux_workers: int = 16,
        class_policy: ClassPolicy | None = None,
        allow_custom_code: bool = False,
        app_dir: str | None = None,
        threads: SharedThreads | None = None,
    ) -> None:
        super().__init__(
            name=name,
            job_id=job_id,
            protocol=protocol,
            run_dir=run_dir,
            workspace_root=workspace_root,
            aux_workers=aux_workers,
            app_dir=app_dir,
            threads=threads,
        )
        self.app_config = app_config
        self.class_policy = class_policy or ClassPolicy()  # which classes the config may name
        self.allow_custom_code = allow_custom_code  # run custom/ code the server ships (tls/mtls, or opted in)
        self.join_timeout = join_timeout
        self.drain_timeout = drain_timeout
        self.server_lost_timeout = server_lost_timeout
        self._server_lost_at: float | None = None
        self.executors: dict[str, Executor] = {}
        self.filters = SiteFilters(SiteType.CLIENT)
        self._inbox: queue.Queue = queue.Queue()
        self._welcome = threading.Event()
        self._current: tuple[str, Signal] | None = None
        self._aborted_tasks: set[str] = set()
        self._task_ids: set[str] = set()  # every task received: a task sent again is not run twice
        self._done_ids: set[str] = set()
        self._results: OrderedDict[str, Frame] = OrderedDict()  # task id -> its result frame (the latest ones)
        self._lock = threading.Lock()
        self._opened = False
        self._shipped: dict | None = None
        self._lane: Lane | None = None  # start(): the site's work runs on shared threads, not on run()'s
        self._on_done: Callable[[str | None], None] | None = None
        self._ended = False

    # lifecycle ---------------------------------------------------------------------------------------
    def open(self) -> None:
        """Start this site's transport endpoint."""
        if not self._opened:
            self.protocol.start(self.on_frame, self.on_peer)
            self._opened = True

    def run(self) -> str | None:
        """Join, build, START_RUN, execute tasks until the server ends the run; return the failure or None.

        Everything runs on the calling thread (see ``start`` for a site without a thread of its own).
        """
        bind_thread(self.name)
        try:
            if self._begin():
                while True:
                    item = self._inbox.get()
                    if item is _END or not self._step(item):
                        break
        finally:
            self._finish()
        return self.failure

    def start(self, lane: Lane, on_done: Callable[[str | None], None]) -> None:
        """Run as ``run`` does, but each step (joining, a task, the end) as a call on ``lane``; return at once.

        An idle site holds no thread. ``on_done(failure)`` is called once the site's run has ended.
        """
        self._lane = lane
        self._on_done = on_done
        lane.submit(self._lane_begin)

    def _lane_begin(self) -> None:
        if not self._begin():
            self._lane_end()

    def _lane_end(self) -> None:
        if self._ended:
            return
        try:
            self._finish()
        finally:
            assert self._on_done is not None
            self._on_done(self.failure)

    def _lane_task(self, frame: Frame) -> None:
        if not self._ended and not self._step(frame):
            self._lane_end()

    def _deliver(self, item: Any) -> None:
        """Hand a task (or ``_END``) to the site's work: run()'s queue, or its lane."""
        lane = self._lane
        if lane is None:
            self._inbox.put(item)
        elif item is _END:
            lane.submit(self._lane_end)
        else:
            lane.submit(self._lane_task, item)

    def _begin(self) -> bool:
        """Join, build, START_RUN; return whether to serve tasks (False: the site cannot go on)."""
        try:
            self.open()
            self._join()
            fl_ctx = self.new_context()
            try:
                self._build()
                self.fire_required(EventType.SYSTEM_START, fl_ctx)
                self.fire_required(EventType.ABOUT_TO_START_RUN, fl_ctx)
                self.fire_required(EventType.START_RUN, fl_ctx)
            except Exception as exc:
                self._fatal(f"{exc}", exc)
            else:
                self.aux.set_ready()
                self._send_control(Kind.READY)
                self.log.info("ready: executors for tasks %s", sorted(self.executors))
            return True
        except ConnectError as exc:  # no server, or not admitted: the message says it all (no traceback)
            self._fatal(str(exc))
        except Exception as exc:  # an error of the runtime itself: this site dies, the run must know
            self._fatal(f"client runtime error: {exc!r}", exc)
        except BaseException as exc:  # sys.exit() or KeyboardInterrupt while it joined or built its components
            self._fatal(f"the site stopped: {exc!r} was raised while it started", exc)
        return False

    def _step(self, frame: Frame) -> bool:
        """Run one task; return False when the runtime itself failed (this site dies, the run is told)."""
        try:
            self._run_task(frame)
            return True
        except Exception as exc:
            self._fatal(f"client runtime error: {exc!r}", exc)
            return False
        except BaseException as exc:  # sys.exit() or KeyboardInterrupt in an executor, filter or handler
            self._fatal(f"the site stopped: {exc!r} was raised while it ran a task", exc)
            return False

    def _join(self) -> None:
        deadline = time.monotonic() + self.join_timeout
        delay = 0.01
        hello = make_frame(Kind.HELLO, {"want_app": self.app_config is None})
        while True:
            try:
                self.send_frame(SiteType.SERVER, hello)
                break
            except ConnectError:
                if time.monotonic() > deadline or self.abort_signal.triggered:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        if not self._welcome.wait(max(0.0, deadline - time.monotonic())):
            raise ConnectError(f"{self.name}: the server did not answer within {self.join_timeout}s")
        if self.failure is not None:  # the server turned this site away
            raise ConnectError(f"{self.name} was not admitted: {self.failure}")
        if self.app_config is None:
            if self._shipped is None:
                raise ConnectError(f"{self.name}: the server sent no app")
            refusal = None if self.allow_custom_code else custom_code_refusal(self._shipped, self.name)
            if refusal:
                self._fatal(refusal)  # the server is told why
                raise ConfigError(refusal)
            self.app_config = install_app(self._shipped, self.run_dir, self.name)
            self.workspace.app_dir = os.path.dirname(app_custom_dir(self.run_dir, self._shipped))
            self.class_policy = self.class_policy.with_custom_dirs([app_custom_dir(self.run_dir, self._shipped)])

    def _build(self) -> None:
        cfg = self.app_config
        if cfg is None:
            raise RuntimeError(f"{self.name}: no app to build (it neither had a job nor got one from the server)")
        for i, entry in enumerate(cfg.get("executors", [])):
            where = f"{self.name}: executors[{i}]"
            executor = build_component(entry["executor"], where, self.class_policy)
            if not isinstance(executor, Executor):
                raise TypeError(f"{where}: {entry['executor'].get('path')} is not an Executor")
            cid = entry.get("id") or ("executor" if len(cfg["executors"]) == 1 else f"executor_{i}")
            self.components[cid] = executor
            for task_name in entry.get("tasks") or ["*"]:
                if task_name in self.executors:
                    raise ValueError(f"{where}: task {task_name!r} already has an executor")
                self.executors[task_name] = executor
        for entry in cfg.get("components", []):
            cid = entry.get("id")
            self.components[cid] = build_component(entry, f"{self.name}: component {cid!r}", self.class_policy)
        self.filters.load(self, cfg, self.class_policy)

    def _fatal(self, reason: str, exc: BaseException | None = None) -> None:
        if self.record_failure(reason):
            if exc is not None:
                self.log.error("cannot go on: %s", reason, exc_info=exc)
            else:
                self.log.error("cannot go on: %s", reason)
            self.abort_signal.trigger(reason)
            if not self._opened:
                return  # never reached the server: nobody to tell
            try:
                self._send_control(Kind.FATAL, topic=reason)
            except TransportError as err:
                self.log.error("could not tell the server: %s", err)

    def on_peer(self, name: str, connected: bool) -> None:
        """A peer joined or left; when the server comes back after a loss, join it again."""
        super().on_peer(name, connected)
        if name != SiteType.SERVER:
            return
        if not connected:
            self._server_lost_at = time.monotonic()
            self.log.warning("lost the connection to the server; waiting up to %ss for it", self.server_lost_timeout)
            timer = threading.Timer(self.server_lost_timeout, self._check_server)
            timer.daemon = True
            timer.start()
        elif self._server_lost_at is not None:
            self._server_lost_at = None
            self.log.info("the server is back; joining again")
            try:
                self._send_control(Kind.HELLO)
            except TransportError as exc:
                self.log.error("could not join the server again: %s", exc)

    def _check_server(self) -> None:
        """The server has been gone for ``server_lost_timeout``: unless it came back, end this site's run."""
        lost_at = self._server_lost_at
        if lost_at is not None and time.monotonic() - lost_at >= self.server_lost_timeout - 0.01:
            self.interrupt(f"lost the connection to the server for more than {self.server_lost_timeout}s")

    def _finish(self) -> None:
        self._ended = True  # (once: run() calls it in its finally, a lane through _lane_end)
        current = self._current
        if current is not None:
            current[1].trigger("run ended")
        self.aux.close(drain_timeout=self.drain_timeout)  # requests already received are still handled
        self.fed_events.close()  # federated events already received are fired before END_RUN (up to 2 s)
        fl_ctx = self.new_context()
        if self.components:
            self._fire(EventType.ABOUT_TO_END_RUN, fl_ctx)
            self._fire(EventType.END_RUN, fl_ctx)
            self._fire(EventType.SYSTEM_END, fl_ctx)
        try:
            self._send_control(Kind.BYE, topic=self.failure or "")
        except TransportError:
            pass
        self.protocol.stop()
        self.log.info("run ended%s", f" with failure: {self.failure}" if self.failure else "")

    def abort_run(self, reason: str, fl_ctx: Any = None) -> None:
        """End this site's run: the server is told and ends the run everywhere."""
        self._fatal(f"aborted at {self.name}: {reason}")

    def joined(self) -> bool:
        """Whether the server has answered this site's hello (there is a run to end)."""
        return self._welcome.is_set() and self._opened

    def interrupt(self, reason: str) -> None:
        """End this site's run now (a signal, or its parent process died): the server is told, the task aborted."""
        self._fatal(reason)
        current = self._current
        if current is not None:
            current[1].trigger(reason)
        self._welcome.set()
        self._deliver(_END)

    def fire_and_forget_aux_request(
        self, topic: str, request: Shareable, fl_ctx: Any, optional: bool = False, secure: bool = False
    ) -> dict:
        """Send ``request`` to the server without waiting for a reply; returns ``{}``."""
        return self.send_aux_request(SiteType.SERVER, topic, request, 0, fl_ctx, optional=optional)

    def _send_control(self, kind: str, **headers: Any) -> None:
        self.send_frame(SiteType.SERVER, Frame(kind=kind, **headers))

    # frames from the server --------------------------------------------------------------------------
    def on_control_frame(self, frame: Frame) -> None:
        """Handle the server's control frames (welcome, start, task, abort_task, end)."""
        if frame.sender != SiteType.SERVER:
            self.log.warning("ignored %s frame from %s: only the server sends control frames", frame.kind, frame.sender)
            return
        kind = frame.kind
        if kind == Kind.TASK:
            self._on_task(frame)
        elif kind == Kind.WELCOME or kind == Kind.START:
            cacheable = isinstance(frame.meta, bytes) and not frame.buffers
            shared = _site_lists.get(frame.meta) if cacheable else None
            if shared is not None:  # the same body another site of this process has decoded: its list is shared
                self.sites = shared
                self._welcome.set()
                return
            try:
                body = frame_payload(frame)
            except CodecError as exc:
                self.log.error("bad %s frame from the server: %s", kind, exc)
                return
            if isinstance(body, dict):
                sites = body.get("sites")
                if isinstance(sites, list) and set(map(type, sites)) <= {str}:
                    self.sites = SiteNames(sites)
                    if cacheable and set(body) <= {"sites", "job_id"}:
                        _site_lists.put(frame.meta, self.sites)
                if kind == Kind.WELCOME and isinstance(body.get("app"), dict):
                    self._shipped = body["app"]
                    if isinstance(body.get("job_id"), str) and body["job_id"]:
                        self.adopt_job_id(body["job_id"])
            self._welcome.set()
        elif kind == Kind.ABORT_TASK:
            self._abort_task(frame.ref_id)
        elif kind == Kind.END:
            if frame.topic:
                self.record_failure(frame.topic)
                self.abort_signal.trigger(frame.topic)
            current = self._current
            if current is not None:
                current[1].trigger("run ended")
            self._welcome.set()
            self._deliver(_END)
        else:
            self.log.warning("ignored unknown frame kind %r from the server", kind)

    def _on_task(self, frame: Frame) -> None:
        """Queue a new task; a task sent again (after a lost connection) is answered, never run twice."""
        task_id = frame.msg_id
        with self._lock:
            seen = task_id in self._task_ids
            self._task_ids.add(task_id)
            done = task_id in self._done_ids
            kept = self._results.get(task_id)
        if not seen:
            self._deliver(frame)
            return
        if not done:
            self.log.info("task %r (%s) was sent again; it is already queued or running here", frame.topic, task_id)
            return
        if kept is None:  # ran long ago: its result was sent, and is no longer kept
            reply = make_reply(
                ReturnCode.EXECUTION_RESULT_ERROR,
                {ReservedHeaderKey.ERROR: f"task {task_id} already ran at {self.name}; its result is no longer kept"},
            )
            kept = self._result_frame(frame, reply)
        self.log.info("task %r (%s) was sent again; it already ran here: its result goes again", frame.topic, task_id)
        self._spawn(self._deliver_result, frame.topic, kept)

    def _abort_task(self, task_id: str) -> None:
        with self._lock:
            current = self._current
            if current is None or current[0] != task_id:
                self._aborted_tasks.add(task_id)
                return
        current[1].trigger("task aborted by the server")

        def fire() -> None:
            bind_thread(self.name)
            ctx = self.new_context()
            ctx.set_prop(FLContextKey.TASK_ID, task_id, private=False, sticky=False)
            self.fire_event(EventType.ABORT_TASK, ctx)

        self._spawn(fire, name=f"{self.name}-abort")

    def _spawn(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        """Run ``fn(*args)`` beside the site's work: on the shared threads if it has them, else a thread."""
        if self.threads is not None:
            try:
                self.threads.aux_lane(self.name, 1).submit(fn, *args)
            except RuntimeError:  # the shared threads are closed: the run is over
                self.log.debug("not run (the run is over): %s", getattr(fn, "__name__", fn))
        else:
            threading.Thread(target=fn, args=args, name=name, daemon=True).start()

    # running a task ----------------------------------------------------------------------------------
    def _executor_for(self, task_name: str) -> Executor | None:
        return self.executors.get(task_name) or self.executors.get("*")

    def _run_task(self, frame: Frame) -> None:
        task_name, task_id = frame.topic, frame.msg_id
        abort = Signal(parent=self.abort_signal)
        with self._lock:
            self._current = (task_id, abort)
            if task_id in self._aborted_tasks:
                self._aborted_tasks.discard(task_id)
                abort.trigger("task aborted by the server")
        try:
            result = self._execute(frame, task_name, task_id, abort)
        finally:
            with self._lock:
                self._current = None
        self._send_result(frame, result)

    def _execute(self, frame: Frame, task_name: str, task_id: str, abort: Signal) -> Shareable:
        fl_ctx = self.new_context()
        fl_ctx.set_prop(FLContextKey.TASK_NAME, task_name, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.TASK_ID, task_id, private=True, sticky=False)
        if abort.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        try:
            data = frame_shareable(frame, self.tensor_device)
        except CodecError as exc:
            self.log.error("task %r (%s): cannot decode the task data: %s", task_name, task_id, exc)
            return make_reply(ReturnCode.BAD_TASK_DATA, {ReservedHeaderKey.ERROR: str(exc)})
        fl_ctx.set_peer_context(peer_context_from_props(data.get_peer_props()))
        executor = self._executor_for(task_name)
        if executor is None:
            self.log.error(
                "no executor for task %r; this site's executors handle %s", task_name, sorted(self.executors) or "none"
            )
            return make_reply(ReturnCode.TASK_UNKNOWN, {ReservedHeaderKey.ERROR: f"no executor for task {task_name!r}"})
        try:
            data = self.filters.apply(self, FilterChainType.TASK_DATA_CHAIN, task_name, data, fl_ctx)
        except FilterError as exc:
            return exc.reply(abort.triggered, like=data)
        fl_ctx.set_prop(FLContextKey.TASK_DATA, data, private=True, sticky=False)
        self.fire_event(EventType.BEFORE_TASK_EXECUTION, fl_ctx)
        try:
            result = executor.execute(task_name, data, fl_ctx, abort)
        except Exception as exc:
            executor.log_exception(fl_ctx, f"{type(executor).__name__}.execute raised on task {task_name!r}: {exc!r}")
            result = make_reply(ReturnCode.EXECUTION_EXCEPTION, {ReservedHeaderKey.ERROR: repr(exc)})
        else:
            if abort.triggered:
                result = make_reply(ReturnCode.TASK_ABORTED)
            elif not isinstance(result, Shareable):
                executor.log_error(
                    fl_ctx,
                    f"{type(executor).__name__}.execute returned {type(result).__name__} for task {task_name!r}, "
                    "not a Shareable; return make_reply(ReturnCode.OK) or a DXO's to_shareable()",
                )
                result = make_reply(
                    ReturnCode.EXECUTION_RESULT_ERROR,
                    {ReservedHeaderKey.ERROR: f"execute returned {type(result).__name__}, not a Shareable"},
                )
        jar = data.get_cookie_jar()
        if jar and result.get_cookie_jar() is None:
            result.set_cookie_jar(jar)
        fl_ctx.set_prop(FLContextKey.TASK_RESULT, result, private=True, sticky=False)
        self.fire_event(EventType.AFTER_TASK_EXECUTION, fl_ctx)
        try:
            result = self.filters.apply(self, FilterChainType.TASK_RESULT_CHAIN, task_name, result, fl_ctx)
        except FilterError as exc:
            return exc.reply(abort.triggered, like=result)
        if jar and result.get_cookie_jar() is None:
            result.set_cookie_jar(jar)
        return result

    def _result_frame(self, task: Frame, result: Shareable) -> Frame:
        result.set_header(ReservedHeaderKey.TASK_NAME, task.topic)
        result.set_header(ReservedHeaderKey.TASK_ID, task.msg_id)
        result.set_peer_props({ReservedKey.IDENTITY_NAME: self.name, ReservedKey.RUN_NUM: self.job_id})
        try:
            return make_frame(Kind.RESULT, result, ref_id=task.msg_id, topic=task.topic)
        except CodecError as exc:
            self.log.error("result of task %r cannot be sent: %s", task.topic, exc)
            return self._result_frame(
                task, make_reply(ReturnCode.EXECUTION_RESULT_ERROR, {ReservedHeaderKey.ERROR: str(exc)})
            )

    def _send_result(self, task: Frame, result: Shareable) -> None:
        frame = self._result_frame(task, result)
        with self._lock:  # kept, so that a task the server sends again is answered without running it again
            self._done_ids.add(task.msg_id)
            self._results[task.msg_id] = frame
            while len(self._results) > KEPT_RESULTS:
                self._results.popitem(last=False)
        self._deliver_result(task.topic, frame)

    def _deliver_result(self, task_name: str, frame: Frame) -> None:
        try:
            self.send_frame(SiteType.SERVER, frame)
        except TransportError as exc:
            self.log.warning(
                "result of task %r not delivered to the server (%s); it goes again if the server asks", task_name, exc
            )
