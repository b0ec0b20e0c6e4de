"""ServerRuntime: the server's engine. Waits for every site to be ready, runs the workflows, ends the run."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..apis.client import Client
from ..apis.controller_spec import TaskCompletionStatus
from ..apis.engine_spec import ServerEngineSpec
from ..apis.event_type import EventType
from ..apis.fl_constant import FLContextKey, SiteType
from ..apis.fl_context import FLContext
from ..apis.impl.controller import Controller
from ..apis.shareable import Shareable
from ..communication.protocol import CommunicationProtocol, Frame
from ..errors import CodecError, TransportError
from ..progress import RunProgress, console_display
from .allowlist import ClassPolicy
from .components import build_component
from .fates import SiteFates
from .filters import SiteFilters
from .frames import Kind, frame_payload, make_frame
from .logs import bind_thread
from .scheduler import TaskScheduler
from .site import SiteNames, SiteRuntime

WAIT_NOTE_INTERVAL = 5.0  # seconds between the lines that say which sites the server still waits for


class ServerRuntime(SiteRuntime, ServerEngineSpec):
    """The engine of the server; ``run()`` drives the whole run on the calling thread."""

    def __init__(
        self,
        *,
        job_id: str,
        protocol: CommunicationProtocol,
        run_dir: str,
        workspace_root: str,
        app_config: dict,
        clients: list[str] | None,
        min_clients: int = 1,
        mandatory_clients: list[str] | None = None,
        app_for_client: Callable[[str], dict | None] | None = None,
        ready_timeout: float = 120.0,
        end_timeout: float = 30.0,
        abort_grace: float = 10.0,
        client_lost_timeout: float = 10.0,
        aux_workers: int = 16,
        class_policy: ClassPolicy | None = None,
        app_dir: str | None = None,
        max_concurrent_tasks: int | None = None,
        progress: RunProgress | None = None,
    ) -> None:
        super().__init__(
            name=SiteType.SERVER,
            job_id=job_id,
            protocol=protocol,
            run_dir=run_dir,
            workspace_root=workspace_root,
            aux_workers=aux_workers,
            app_dir=app_dir,
        )
        self.app_config = app_config
        self.class_policy = class_policy or ClassPolicy()  # which classes the config may name
        self.expected = list(clients) if clients is not None else None  # None: whoever joins (min_clients)
        self.min_clients = len(clients) if clients is not None else max(1, min_clients)
        self.mandatory = list(mandatory_clients or [])
        self.app_for_client = app_for_client
        self.clients: dict[str, Client] = {name: Client(name) for name in clients or []}
        self._list_sites()
        self._welcome_cache: tuple[SiteNames, str, Frame] | None = None
        self._started = False
        self.ready_timeout = ready_timeout
        self.end_timeout = end_timeout
        self.abort_grace = abort_grace
        self.workflows: list[tuple[str, Controller]] = []
        self.filters = SiteFilters(SiteType.SERVER)  # run by the scheduler: task data out, task results in
        # the run's progress on the console (a live line on a terminal, plain lines otherwise), fed by the scheduler
        self.progress = progress if progress is not None else RunProgress(console_display(SiteType.SERVER))
        # a lost site's tasks wait client_lost_timeout; max_concurrent_tasks: at most that many out at once
        self.scheduler = TaskScheduler(
            self, lost_timeout=client_lost_timeout, max_concurrent_tasks=max_concurrent_tasks
        )
        self.fates = SiteFates()
        self._cv = threading.Condition()
        self._joined: set[str] = set()
        self._ready: set[str] = set()
        self._gone: set[str] = set()
        self._ending = False
        self._opened = False

    # ServerEngineSpec --------------------------------------------------------------------------------
    def get_clients(self) -> list[Client]:
        """Return the job's client sites."""
        return list(self.clients.values())

    def fire_and_forget_aux_request(
        self,
        targets: Any,
        topic: str,
        request: Shareable,
        fl_ctx: FLContext,
        optional: bool = False,
        secure: bool = False,
    ) -> dict:
        """Send ``request`` to ``targets`` (None: every client) without waiting for replies; returns ``{}``."""
        return self.send_aux_request(targets, topic, request, 0, fl_ctx, optional=optional)

    def open(self) -> None:
        """Start the server's transport endpoint."""
        if not self._opened:
            self.protocol.set_admission(self.connect_refusal)  # non-members are refused at the transport's door
            self.protocol.start(self.on_frame, self.on_peer)
            self._opened = True

    # the run -----------------------------------------------------------------------------------------
    def run(self) -> str | None:
        """Run the job to its end; return the failure reason, or None when it succeeded."""
        bind_thread(self.name)
        self.open()
        self.scheduler.start()
        fl_ctx = self.new_context()
        started = False
        try:
            self._build()
            self.fire_required(EventType.SYSTEM_START, fl_ctx)
            self.fire_required(EventType.ABOUT_TO_START_RUN, fl_ctx)
            self.fire_required(EventType.START_RUN, fl_ctx)
            started = True
            if self.workflows:
                self.workflows[0][1].start_controller(fl_ctx)
            self.aux.set_ready()
            if self._wait_ready():
                self._broadcast_control(Kind.START, payload={"sites": list(self.sites)})
                self.log.info("all %d sites ready; the run starts", len(self.clients))
                self._run_workflows(fl_ctx)
                self._judge_losses()
        except Exception as exc:
            self.abort_run(f"{exc}", exc=exc)
        finally:
            self._end_run(fl_ctx, started)
        return self.failure_summary()

    def _build(self) -> None:
        cfg = self.app_config
        for i, entry in enumerate(cfg.get("workflows", [])):
            wid = entry.get("id") or f"workflow_{i}"
            comp = build_component(entry, f"server: workflow {wid!r}", self.class_policy)
            if not isinstance(comp, Controller):
                raise TypeError(f"server: workflow {wid!r} ({entry.get('path')}) is not a Controller")
            comp.set_communicator(self.scheduler)
            self.components[wid] = comp
            self.workflows.append((wid, comp))
        for entry in cfg.get("components", []):
            cid = entry.get("id")
            self.components[cid] = build_component(entry, f"server: component {cid!r}", self.class_policy)
        self.filters.load(self, cfg, self.class_policy)
        if not self.workflows:
            raise ValueError("the server app has no workflow: add a Controller with job.to_server(controller)")

    def _can_start(self) -> bool:
        if self.expected is not None:
            return len(self._ready) >= len(self.expected)
        return len(self._ready) >= self.min_clients and set(self.mandatory) <= self._ready

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        next_note = time.monotonic() + WAIT_NOTE_INTERVAL
        with self._cv:
            while not self._can_start() and self.failure is None:
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    self.abort_run(self._not_ready_reason())
                    return False
                if now >= next_note:  # say what the run waits for, every few seconds
                    self.log.info("%s; giving up in %.0fs", self._waiting_for(), left)
                    next_note = now + WAIT_NOTE_INTERVAL
                self._cv.wait(min(left, max(0.0, next_note - now)))
            if self.failure is not None:
                return False
            late = sorted(set(self.clients) - self._ready)  # joined but not ready: not part of this run
            for name in late:
                del self.clients[name]
            self._list_sites()
            self._started = True
        for name in late:
            self.fates.not_in_run(name)
            self.log.warning("%s was not ready when the run started; it is not part of the run", name)
            self._tell_end(name, "the run started without this site (it was not ready in time)")
        return True

    def _waiting_for(self) -> str:
        if self.expected is not None:
            missing = sorted(set(self.expected) - self._ready)
            joined = sorted(set(missing) & self._joined)
            return f"waiting for sites {missing}" + (f" ({joined} joined, not ready yet)" if joined else "")
        return f"waiting for {self.min_clients} sites to be ready (ready: {sorted(self._ready)})"

    def _not_ready_reason(self) -> str:
        if self.expected is not None:
            missing = sorted(set(self.expected) - self._ready)
            joined = sorted(set(missing) & self._joined)
            return f"sites {missing} were not ready within {self.ready_timeout}s" + (
                f" ({joined} joined but did not finish START_RUN)" if joined else " (they never joined)"
            )
        mandatory = sorted(set(self.mandatory) - self._ready)
        return (
            f"only {len(self._ready)} of min_clients={self.min_clients} sites were ready within "
            f"{self.ready_timeout}s (ready: {sorted(self._ready)}"
            + (f"; mandatory sites missing: {mandatory}" if mandatory else "")
            + ")"
        )

    def _tell_end(self, name: str, reason: str) -> None:
        try:
            self.send_frame(name, Frame(kind=Kind.END, topic=reason))
        except TransportError:
            pass

    def _run_workflows(self, fl_ctx: FLContext) -> None:
        for i, (wid, controller) in enumerate(self.workflows):
            if self.abort_signal.triggered:
                return
            if i > 0:
                controller.start_controller(fl_ctx)
            fl_ctx.set_prop(FLContextKey.WORKFLOW, wid, private=True, sticky=True)
            self.fire_event(EventType.START_WORKFLOW, fl_ctx)
            try:
                self._run_control_flow(wid, controller, fl_ctx)
            finally:  # the workflow's cleanup runs even when control_flow failed
                try:
                    controller.stop_controller(fl_ctx)
                finally:
                    self.fire_event(EventType.END_WORKFLOW, fl_ctx)

    def _run_control_flow(self, wid: str, controller: Controller, fl_ctx: FLContext) -> None:
        outcome: dict[str, BaseException] = {}

        def body() -> None:
            bind_thread(self.name)
            try:
                controller.control_flow(self.abort_signal, fl_ctx)
            except BaseException as exc:  # reported to the caller of run()
                outcome["error"] = exc

        thread = threading.Thread(target=body, name=f"server-{wid}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if self.abort_signal.triggered:
                thread.join(self.abort_grace)
                if thread.is_alive():
                    self.log.error(
                        "workflow %r did not return within %ss of the abort; leaving it", wid, self.abort_grace
                    )
                return
        if "error" in outcome:
            exc = outcome["error"]
            raise RuntimeError(f"workflow {wid!r} ({type(controller).__name__}.control_flow) raised {exc!r}") from exc

    def abort_run(self, reason: str, fl_ctx: Any = None, exc: BaseException | None = None) -> None:
        """End the run now because of ``reason``; the run is reported as failed."""
        if self.record_failure(reason) or exc is not None:
            if exc is not None:
                self.log.error("run aborted: %s", reason, exc_info=exc)  # the traceback keeps its lines
            else:
                self.log.error("run aborted: %s", reason)
        self.abort_signal.trigger(reason)
        self.scheduler.cancel_all_tasks(TaskCompletionStatus.ABORTED)
        with self._cv:
            self._cv.notify_all()

    def _end_run(self, fl_ctx: FLContext, started: bool) -> None:
        self.scheduler.cancel_all_tasks(
            TaskCompletionStatus.ABORTED if self.failure else TaskCompletionStatus.CANCELLED
        )
        with self._cv:
            self._ending = True
            to_tell = sorted(self._joined - self._gone)
        for name in to_tell:
            try:
                self.send_frame(name, Frame(kind=Kind.END, topic=self.failure or ""))
            except TransportError:
                pass
        deadline = time.monotonic() + self.end_timeout
        with self._cv:
            while not (self._joined <= self._gone) and time.monotonic() < deadline:
                self._cv.wait(deadline - time.monotonic())
            missing = sorted(self._joined - self._gone)
        if missing:
            self.log.warning("sites %s did not confirm the end of the run within %ss", missing, self.end_timeout)
        self.aux.close(drain_timeout=self.end_timeout)
        self.fed_events.close()  # federated events already received are fired before END_RUN (up to 2 s)
        if started:
            self._fire(EventType.ABOUT_TO_END_RUN, fl_ctx)
            self._fire(EventType.END_RUN, fl_ctx)
            self._fire(EventType.SYSTEM_END, fl_ctx)
        self.scheduler.stop()
        self.protocol.stop()
        self.progress.close(self.failure)
        self.log.info("run ended%s", f" with failure: {self.failure}" if self.failure else "")

    # frames ------------------------------------------------------------------------------------------
    def _broadcast_control(self, kind: str, payload: Any = None) -> None:
        template = make_frame(kind, payload)
        for name in self.clients:
            try:
                self.send_frame(name, Frame(kind=kind, meta=template.meta, buffers=template.buffers))
            except TransportError as exc:
                self.abort_run(f"cannot reach {name}: {exc}")

    def on_control_frame(self, frame: Frame) -> None:
        """Handle the clients' control frames (hello, ready, result, fatal, bye)."""
        name, kind = frame.sender, frame.kind
        if kind == Kind.HELLO:
            self._on_hello(name, frame)
            return
        if name not in self.clients:
            self.log.warning("ignored %s frame from %r: not a site of this run (%s)", kind, name, list(self.clients))
            return
        if kind == Kind.RESULT:
            self.scheduler.on_result(frame)
        elif kind == Kind.READY:
            with self._cv:
                self._ready.add(name)
                self._cv.notify_all()
        elif kind == Kind.FATAL:
            self.fates.failed(name, frame.topic)
            self.abort_run(f"site {name} failed: {frame.topic}")
        elif kind == Kind.BYE:
            reason = frame.topic
            if not reason and not self._ending:  # a site leaves only when the run ends, or failing
                reason = "it left before the run ended, saying no reason"
            if reason and reason != self.failure:  # not just the server's own reason, echoed
                self.fates.failed(name, reason)
            else:
                self.fates.ended(name)
            with self._cv:
                self._gone.add(name)
                self._cv.notify_all()
            if reason and not self._ending:
                self.abort_run(f"site {name} failed: {reason}")
        else:
            self.log.warning("ignored unknown frame kind %r from %s", kind, name)

    def _on_hello(self, name: str, frame: Frame) -> None:
        refusal = self._admit(name)
        if refusal:
            self.log.warning("refused %s: %s", name, refusal)
            self._tell_end(name, refusal)
            return
        try:
            hello = frame_payload(frame)
        except CodecError as exc:
            self._tell_end(name, f"bad hello: {exc}")
            return
        if isinstance(hello, dict) and hello.get("want_app"):
            app = self.app_for_client(name) if self.app_for_client is not None else None
            if app is None:
                self._tell_end(name, f"the server has no app for {name!r} to ship")
                return
            welcome = make_frame(Kind.WELCOME, {"sites": list(self.sites), "job_id": self.job_id, "app": app})
        else:
            welcome = self._welcome_frame()
        with self._cv:
            rejoined = name in self._joined
            self._joined.add(name)
            self._gone.discard(name)
            ending = self._ending
        try:
            self.send_frame(name, welcome)
            if ending:
                self.send_frame(name, Frame(kind=Kind.END, topic=self.failure or ""))
        except TransportError as exc:
            self.log.error("cannot answer %s: %s", name, exc)
            # the site would wait out its join timeout for a welcome that cannot come: tell it why, in a word
            self._tell_end(name, f"the server cannot send {name} its welcome: {exc}")
        if rejoined:
            self.fates.back(name)
            self.scheduler.client_up(name)
            ctx = self.new_context()
            ctx.set_prop(FLContextKey.RECONNECTED_CLIENT_NAME, name, private=True, sticky=False)
            self.fire_event(EventType.CLIENT_RECONNECTED, ctx)

    def _list_sites(self) -> None:
        """The run's sites (the server first) from ``clients``, after it changed."""
        self.sites = SiteNames([SiteType.SERVER, *self.clients])

    def _welcome_frame(self) -> Frame:
        """The welcome of a site that has its app: encoded once for as long as the site list stays the same."""
        sites, job_id = self.sites, self.job_id
        cached = self._welcome_cache
        if cached is None or cached[0] is not sites or cached[1] != job_id:
            body = {"sites": list(sites), "job_id": job_id}
            cached = self._welcome_cache = (sites, job_id, make_frame(Kind.WELCOME, body))
        template = cached[2]
        return Frame(kind=Kind.WELCOME, meta=template.meta, buffers=template.buffers)

    def connect_refusal(self, name: str) -> str | None:
        """Why ``name`` may not connect (None when it may): the job's named sites; for a job deployed to @ALL,
        new names until the run starts, afterwards only the sites of the run; never a site that said goodbye
        at the end of the run."""
        with self._cv:
            if self._ending and name in self._gone:  # it said goodbye: whoever claims its name now is not it
                return f"{name!r} has ended its part of the run"
            if name in self.clients:
                return None
            if self.expected is not None:
                return f"{name!r} is not a site of this job (its sites are {self.expected})"
            if self._started or self._ending:
                return f"the run has already started without {name!r}"
            return None

    def _admit(self, name: str) -> str:
        """Why ``name`` may not join (empty when it may); new sites join until the run starts."""
        with self._cv:
            refusal = self.connect_refusal(name)
            if refusal is None and name not in self.clients:
                self.clients[name] = Client(name)
                self._list_sites()
            return refusal or ""

    def refuse_peer(self, name: str) -> str | None:
        """Only the sites of this run reach the server's aux handlers."""
        if name in self.clients:
            return None
        return f"{name!r} is not a site of this run (its sites are {sorted(self.clients)})"

    def on_peer(self, name: str, connected: bool) -> None:
        """A client left: fail its pending aux requests, end what waits on it, fire CLIENT_DISCONNECTED."""
        super().on_peer(name, connected)
        if connected or name not in self.clients:
            return
        with self._cv:
            if name in self._gone or name not in self._joined:
                return
            self._gone.add(name)
            ready = name in self._ready
            if self.expected is None and not self._started and not ready:
                # an optional site that left while the run was gathering: it is simply not part of the run
                self._joined.discard(name)
                del self.clients[name]
                self._list_sites()
                self._cv.notify_all()
                return
            self._cv.notify_all()
        self.fates.died(name, "its connection was lost")
        self.scheduler.client_down(name)
        ctx = self.new_context()
        ctx.set_prop(FLContextKey.DISCONNECTED_CLIENT_NAME, name, private=True, sticky=False)
        self.fire_event(EventType.CLIENT_DISCONNECTED, ctx)
        if not ready:
            self.abort_run(f"site {name} left before it was ready")

    def joined(self) -> bool:
        """The server always has a run to end (see ClientRuntime.joined)."""
        return True

    def interrupt(self, reason: str) -> None:
        """End the run now (SIGTERM, SIGINT): the sites are told, and the end waits only briefly for them."""
        self.end_timeout = min(self.end_timeout, 3.0)
        self.abort_grace = min(self.abort_grace, 1.0)
        self.abort_run(reason)

    def site_dead(self, name: str, why: str) -> None:
        """The scheduler gave up on ``name``: it lost its connection and did not come back in time."""
        self.fates.died(name, why)

    def site_fates(self) -> dict[str, str]:
        """Return ``{site: fate}`` for every client site of the job (see SiteFates)."""
        with self._cv:
            names = list(dict.fromkeys([*(self.expected or []), *self._joined, *self.clients]))
            joined, gone = set(self._joined), set(self._gone)
        return self.fates.report(names, joined, gone)

    def _judge_losses(self) -> None:
        """The workflows ended: a run whose sites all died, or that got no result because sites died, failed."""
        lost = sorted(set(self.scheduler.lost_sites()) | set(self.fates.dead()))
        lost = [n for n in lost if n in self.clients]
        if not lost or self.failure is not None:
            return
        why = ", ".join(f"{n} ({self.fates.get(n) or 'died: its connection was lost'})" for n in lost)
        if len(lost) == len(self.clients):
            self.abort_run(f"every site died: {why}")
        elif self.scheduler.results_received == 0 and self.scheduler.tasks_ended_dead:
            self.abort_run(f"the workflow got no task result because sites died: {why}")
        else:
            self.log.warning("the run finished without %d of its %d sites: %s", len(lost), len(self.clients), why)

    def result_of_unknown_task(
        self, name: str, task_name: str, task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """Give a late or unknown result to the workflows' process_result_of_unknown_task."""
        self.fire_event(EventType.BEFORE_PROCESS_RESULT_OF_UNKNOWN_TASK, fl_ctx)
        for _, controller in self.workflows:
            try:
                controller.process_result_of_unknown_task(self.clients[name], task_name, task_id, result, fl_ctx)
            except Exception:
                self.log.exception("process_result_of_unknown_task of %s raised", type(controller).__name__)
        self.fire_event(EventType.AFTER_PROCESS_RESULT_OF_UNKNOWN_TASK, fl_ctx)
