"""TaskScheduler: the server's task table. Sends tasks to clients, matches results, ends tasks.

API calls (broadcast, send, relay, cancel) run on the caller's thread; results, client departures and
deadlines are handled on the scheduler's own thread. Both hold one re-entrant lock, and the task callbacks
(before/after_task_sent_cb, result_received_cb, task_done_cb) run under it, one at a time. A broadcast sends
its frames without the lock, so results are taken while a large task is still going out to other sites.

A client whose connection drops is *away*: its outstanding tasks are kept, and sent again (same task ids, so
the client answers a task it already ran with the result it kept) when it joins again. A client away for
longer than ``lost_timeout`` is *dead*: its tasks end (CLIENT_DEAD where nobody else can answer), even for a
task without a timeout, so no wait outlives a site that is gone for good.

With ``max_concurrent_tasks`` (the simulator's ``threads``) at most that many client tasks are out at once,
across every task and site: a dispatch beyond it is *held*, in order, and sent when a client task ends (its
result came, or it was dropped), so the sites take turns as NVFlare's simulator threads make them. A held
task runs its before/after_task_sent_cb when it is actually sent.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import logsafe
from ..apis.client import Client
from ..apis.controller_spec import ClientTask, SendOrder, Task, TaskCompletionStatus
from ..apis.event_type import EventType
from ..apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from ..apis.fl_context import FLContext, peer_context_from_props
from ..apis.shareable import ReservedHeaderKey, Shareable, make_copy, make_reply
from ..apis.signal import Signal
from ..apis.wf_comm_spec import WFCommSpec
from ..communication.protocol import Frame
from ..errors import CodecError, TransportError
from .filters import FilterChainType, FilterError, structural_copy
from .frames import Kind, frame_shareable, make_frame
from .logs import bind_thread

if TYPE_CHECKING:
    from .server import ServerRuntime

BCAST, SEND, RELAY = "bcast", "send", "relay"


def _error_of(future: concurrent.futures.Future) -> TransportError | None:
    """What a ``_deliver`` run on a sender thread ended with (anything it raised becomes a TransportError)."""
    try:
        return future.result()
    except TransportError as exc:
        return exc
    except Exception as exc:
        return TransportError(f"sending failed: {exc!r}")


MAX_QUEUED_RESULTS = 64  # result frames of one client that may wait for the scheduler thread


class _Op:
    """A standing task and the state of its operator (broadcast, send or relay)."""

    def __init__(self, task: Task, method: str, targets: list[str], **params: Any) -> None:
        self.task = task
        self.method = method
        self.targets = targets
        self.min_responses: int = params.get("min_responses", 0)
        self.wait_after_min: float = params.get("wait_time_after_min_received", 0) or 0
        self.send_order: SendOrder = params.get("send_order", SendOrder.SEQUENTIAL)
        self.result_timeout: float = params.get("task_result_timeout", 0) or 0
        self.outstanding: dict[str, ClientTask] = {}
        self.held: set[str] = set()  # targets waiting for a free slot (max_concurrent_tasks)
        self.responded: set[str] = set()
        self.tried: set[str] = set()
        self.next_index = 0
        self.min_reached_at: float | None = None
        self.done = threading.Event()

    def deadline(self) -> float | None:
        """Earliest moment a time rule may end or advance this task."""
        times = []
        if self.task.timeout and self.task.schedule_time is not None:
            times.append(self.task.schedule_time + self.task.timeout)
        if self.min_reached_at is not None:
            times.append(self.min_reached_at + self.wait_after_min)
        if self.method == RELAY and self.result_timeout:
            for ct in self.outstanding.values():
                if ct.task_sent_time is not None:
                    times.append(ct.task_sent_time + self.result_timeout)
        return min(times) if times else None


class TaskScheduler(WFCommSpec):
    """Runs the server's tasks on client sites (the controller's communicator)."""

    def __init__(
        self, server: ServerRuntime, *, lost_timeout: float = 10.0, max_concurrent_tasks: int | None = None
    ) -> None:
        limit = max_concurrent_tasks
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"max_concurrent_tasks must be None or a positive int, got {max_concurrent_tasks!r}")
        self.server = server
        self.lost_timeout = lost_timeout
        self.max_concurrent_tasks = max_concurrent_tasks
        self._held: list[tuple[_Op, str]] = []  # dispatches waiting for a free slot, first come first served
        self._lock = threading.RLock()
        self._ops: dict[str, _Op] = {}
        self._client_tasks: dict[str, tuple[_Op, ClientTask]] = {}
        self._dead: dict[str, float] = {}  # gone for good (away longer than lost_timeout): when it left
        self._away: dict[str, float] = {}  # connection lost, may come back: when it left
        self.results_received = 0  # task results matched to a standing task
        self.tasks_ended_dead = 0  # tasks that ended CLIENT_DEAD
        self._events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"{server.name}-tasks", daemon=True)
        self._stopped = False
        self._queued_lock = threading.Lock()
        self._queued_results: dict[str, int] = {}  # client -> its result frames waiting for the scheduler thread
        self._drop_log = logsafe.RateLimit()  # one line per client every 10 s about its dropped results
        self._sending: set[str] = set()  # client tasks of a broadcast whose frames are going out now
        self._early: dict[str, tuple[Frame, Shareable, FLContext]] = {}  # their results that came meanwhile
        self.progress = getattr(server, "progress", None)  # the run's progress line (flarelite.progress)

    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler thread."""
        self._stopped = True
        self._events.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    # the WFCommSpec API ------------------------------------------------------------------------------
    def broadcast(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        min_responses: int = 1,
        wait_time_after_min_received: float = 0,
    ) -> None:
        """Send ``task`` to every target now; see Controller.broadcast for when it completes."""
        names = self._resolve(task, targets)
        if not isinstance(min_responses, int) or isinstance(min_responses, bool):
            raise TypeError(f"min_responses must be an int, got {type(min_responses).__name__}")
        if min_responses > len(names):
            raise ValueError(
                f"task {task.name!r}: min_responses={min_responses} is more than the {len(names)} targets {names}"
            )
        if wait_time_after_min_received < 0:
            raise ValueError(f"wait_time_after_min_received must be >= 0, got {wait_time_after_min_received}")
        op = _Op(
            task, BCAST, names, min_responses=min_responses, wait_time_after_min_received=wait_time_after_min_received
        )
        with self._lock:
            self._schedule(op)
            batch: list[tuple[ClientTask, Frame]] = []
            try:
                for name in names:
                    self._dispatch(op, name, fl_ctx, batch)
            except Exception:
                self._finish(op, TaskCompletionStatus.ERROR)
                raise
            self._sending.update(ct.id for ct, _ in batch)
        self._send_batch(op, batch, fl_ctx)
        with self._lock:
            self._evaluate(op)
        self._wake()

    def send(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        send_order: SendOrder = SendOrder.SEQUENTIAL,
        task_assignment_timeout: float = 0,
    ) -> None:
        """Send ``task`` to one target: the first alive one in order (SEQUENTIAL) or the least busy (ANY)."""
        names = self._resolve(task, targets)
        self._check_send_args(task, send_order, task_assignment_timeout)
        op = _Op(task, SEND, names, send_order=send_order)
        with self._lock:
            self._schedule(op)
            self._advance(op, fl_ctx, raise_errors=True)
        self._wake()

    def relay(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        send_order: SendOrder = SendOrder.SEQUENTIAL,
        task_assignment_timeout: float = 0,
        task_result_timeout: float = 0,
        dynamic_targets: bool = True,
    ) -> None:
        """Send ``task`` to each target in turn; the next gets it once the previous answered."""
        if targets is None and not dynamic_targets:
            raise ValueError(f"task {task.name!r}: relay needs targets when dynamic_targets is False")
        names = self._resolve(task, targets)
        self._check_send_args(task, send_order, task_assignment_timeout)
        if task_result_timeout < 0:
            raise ValueError(f"task_result_timeout must be >= 0, got {task_result_timeout}")
        if task.timeout and task_result_timeout > task.timeout:
            raise ValueError(
                f"task {task.name!r}: task_result_timeout ({task_result_timeout}) exceeds the task timeout "
                f"({task.timeout})"
            )
        op = _Op(task, RELAY, names, send_order=send_order, task_result_timeout=task_result_timeout)
        with self._lock:
            self._schedule(op)
            self._advance(op, fl_ctx, raise_errors=True)
        self._wake()

    def wait_for_task(self, task: Task, abort_signal: Signal | None) -> None:
        """Block until ``task`` completes; cancel it as ABORTED when ``abort_signal`` triggers."""
        op = self._ops.get(task.id)
        if op is None:
            return
        while not op.done.wait(0.05):
            if abort_signal is not None and abort_signal.triggered:
                self.cancel_task(task, TaskCompletionStatus.ABORTED)
                return

    def cancel_task(
        self,
        task: Task,
        completion_status: TaskCompletionStatus = TaskCompletionStatus.CANCELLED,
        fl_ctx: FLContext | None = None,
    ) -> None:
        """End ``task`` now with ``completion_status``; clients still on it are told to abort."""
        with self._lock:
            op = self._ops.get(task.id)
            if op is not None:
                self._finish(op, completion_status)

    def cancel_all_tasks(
        self, completion_status: TaskCompletionStatus = TaskCompletionStatus.CANCELLED, fl_ctx: FLContext | None = None
    ) -> None:
        """End every standing task."""
        with self._lock:
            for op in list(self._ops.values()):
                self._finish(op, completion_status)

    def get_num_standing_tasks(self) -> int:
        """Return how many tasks are scheduled and not complete."""
        with self._lock:
            return len(self._ops)

    def get_client_disconnect_time(self, client_name: str) -> float | None:
        """Return when ``client_name`` left, or None if it is connected."""
        with self._lock:
            return self._away.get(client_name, self._dead.get(client_name))

    def lost_sites(self) -> list[str]:
        """Return the clients that are away or dead now."""
        with self._lock:
            return sorted({*self._away, *self._dead})

    # inputs from the server runtime ------------------------------------------------------------------
    def on_result(self, frame: Frame) -> None:
        """A RESULT frame arrived (transport thread): queue it for the scheduler thread.

        A client has a few tasks at a time, so at most ``MAX_QUEUED_RESULTS`` of its results wait here; more are
        a flood (or a bug), dropped with one log line per client every 10 s.
        """
        name = frame.sender
        with self._queued_lock:
            queued = self._queued_results.get(name, 0)
            full = queued >= MAX_QUEUED_RESULTS
            if not full:
                self._queued_results[name] = queued + 1
        if not full:
            self._events.put(("result", frame))
            return
        allowed = self._drop_log.check(name)
        if allowed is not None:
            self.server.log.warning(
                "dropped %d result frame(s) from %s: %d of its results are already waiting to be processed",
                allowed[0] + 1,  # this one too
                name,
                MAX_QUEUED_RESULTS,
            )

    def client_down(self, name: str) -> None:
        """``name``'s connection dropped: its tasks wait ``lost_timeout`` for it to come back, then end."""
        with self._lock:
            self._mark_away(name)
            pending = [op.task.name for op in self._ops.values() if name in op.outstanding]
        self.server.log.warning(
            "%s lost its connection; %s up to %ss for it to come back",
            name,
            f"its tasks {pending} wait" if pending else "waiting",
            self.lost_timeout,
        )
        self._wake()

    def client_up(self, name: str) -> None:
        """``name`` joined again: its outstanding tasks are sent again, and the standing broadcasts it missed."""
        with self._lock:  # new tasks go to it from now on
            self._away.pop(name, None)
            self._dead.pop(name, None)
        self._events.put(("up", name))

    # scheduling --------------------------------------------------------------------------------------
    def _resolve(self, task: Task, targets: list | None) -> list[str]:
        if not isinstance(task, Task):
            raise TypeError(f"expected a Task, got {type(task).__name__}")
        if task.schedule_time is not None:
            raise ValueError(f"Task {task.name!r} was already used; create a new Task for each scheduling")
        clients = self.server.clients
        if targets is None:
            return list(clients)
        if not isinstance(targets, list):
            raise TypeError(f"targets must be None or a list of site names or Clients, got {type(targets).__name__}")
        names = []
        for t in targets:
            if isinstance(t, Client):
                t = t.name
            if not isinstance(t, str):
                raise TypeError(f"targets must hold site names or Clients, got {type(t).__name__}")
            names.append(t)
        unknown = [n for n in names if n not in clients]
        if unknown:
            raise ValueError(f"task {task.name!r}: unknown target(s) {unknown}; the job's clients are {list(clients)}")
        if not names:
            raise ValueError(f"task {task.name!r}: targets is an empty list")
        return list(dict.fromkeys(names))

    @staticmethod
    def _check_send_args(task: Task, send_order: SendOrder, assignment_timeout: float) -> None:
        if not isinstance(send_order, SendOrder):
            raise TypeError(f"send_order must be a SendOrder, got {send_order!r}")
        if assignment_timeout < 0:
            raise ValueError(f"task_assignment_timeout must be >= 0, got {assignment_timeout}")
        if task.timeout and assignment_timeout > task.timeout:
            raise ValueError(
                f"task {task.name!r}: task_assignment_timeout ({assignment_timeout}) exceeds the task timeout "
                f"({task.timeout})"
            )

    def _schedule(self, op: _Op) -> None:
        task = op.task
        task.targets = list(op.targets)
        task.schedule_time = time.time()
        task.is_standing = True
        task.completion_status = None
        self._ops[task.id] = op
        if self.progress is not None:
            self.progress.task_out(task.id, task.name, op.targets, task.data)

    def _dispatch(self, op: _Op, name: str, fl_ctx: FLContext, batch: list | None = None) -> bool:
        """Send ``op.task`` to ``name`` (or, given ``batch``, add its frame there), or hold it while every slot of
        ``max_concurrent_tasks`` is taken; False if it cannot be delivered."""
        if self.max_concurrent_tasks is not None and (
            self._held or len(self._client_tasks) >= self.max_concurrent_tasks
        ):
            op.tried.add(name)
            op.held.add(name)
            self._held.append((op, name))
            return True
        return self._dispatch_now(op, name, fl_ctx, batch)

    def _release_held(self) -> None:
        """Send held dispatches, in order, while a slot of ``max_concurrent_tasks`` is free."""
        while self._held and len(self._client_tasks) < (self.max_concurrent_tasks or 0):
            op, name = self._held.pop(0)
            op.held.discard(name)
            if op.done.is_set():
                continue
            try:
                delivered = self._dispatch_now(op, name, self.server.new_context())
            except Exception:
                self.server.log.exception("task %r could not be sent to %s; it ends with ERROR", op.task.name, name)
                self._finish(op, TaskCompletionStatus.ERROR)
                continue
            if not delivered and op.method in (SEND, RELAY):
                self._advance(op)

    def _dispatch_now(self, op: _Op, name: str, fl_ctx: FLContext, batch: list | None = None) -> bool:
        task = op.task
        ct = ClientTask(client=self.server.clients[name], task=task)
        task.client_tasks.append(ct)
        task.last_client_task_map[name] = ct
        op.tried.add(name)
        if name in self._dead:
            return False
        self._callback(task.before_task_sent_cb, "before_task_sent_cb", client_task=ct, fl_ctx=fl_ctx)
        self._client_tasks[ct.id] = (op, ct)
        op.outstanding[name] = ct
        ct.task_sent_time = time.time()
        if name in self._away:  # sent when it joins again, or ended when it does not
            return True
        if batch is not None:
            frame = self._task_frame(op, ct)
            if frame is not None:  # None: a task data filter failed; the client task ends with its error result
                batch.append((ct, frame))
            return True
        if not self._send_task(op, ct):
            return True
        self._callback(task.after_task_sent_cb, "after_task_sent_cb", client_task=ct, fl_ctx=fl_ctx)
        return True

    def _task_frame(self, op: _Op, ct: ClientTask) -> Frame | None:
        task = op.task
        data = self._filter_task_data(op, ct, make_copy(task.data))
        if data is None:
            return None
        data.set_header(ReservedHeaderKey.TASK_NAME, task.name)
        data.set_header(ReservedHeaderKey.TASK_ID, ct.id)
        data.set_peer_props({ReservedKey.IDENTITY_NAME: self.server.name, ReservedKey.RUN_NUM: self.server.job_id})
        ct.task_send_count += 1
        return make_frame(Kind.TASK, data, msg_id=ct.id, topic=task.name)

    def _send_task(self, op: _Op, ct: ClientTask) -> bool:
        """Send ``ct`` to its client; on a transport failure the client is away (the task is kept for it).

        False when it was not sent: its client is away, or a task data filter failed (see _filter_task_data).
        """
        frame = self._task_frame(op, ct)
        if frame is None:
            return False
        return self._sent(op, ct, self._deliver(ct.client.name, frame))

    def _filter_task_data(self, op: _Op, ct: ClientTask, data: Shareable) -> Shareable | None:
        """Run the server's task data filters on ``ct``'s own copy of the task data (the peer is its client).

        When a filter fails, the client task is not sent: it ends with a TASK_DATA_FILTER_ERROR result (queued
        like a result from the client), rather than being tried again and again as NVFlare does; returns None.
        """
        task, name = op.task, ct.client.name
        filters = self.server.filters
        if filters.needs_copy(FilterChainType.TASK_DATA_CHAIN, task.name):
            data = structural_copy(data)  # a filter changes this client's copy only
        fl_ctx = self.server.new_context()
        peer = {ReservedKey.IDENTITY_NAME: name, ReservedKey.RUN_NUM: self.server.job_id}
        fl_ctx.set_peer_context(peer_context_from_props(peer))
        fl_ctx.set_prop(FLContextKey.TASK_NAME, task.name, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.TASK_ID, ct.id, private=True, sticky=False)
        try:
            return filters.apply(self.server, FilterChainType.TASK_DATA_CHAIN, task.name, data, fl_ctx)
        except FilterError as exc:
            reply = exc.reply(like=data)  # with the task's cookies, as a client's reply has them
            self.on_result(make_frame(Kind.RESULT, reply, sender=name, ref_id=ct.id, topic=task.name))
            return None

    def _filter_result(self, frame: Frame, result: Shareable, fl_ctx: FLContext) -> Shareable:
        """Run the server's task result filters on an arrived result; a failing filter replaces it with a
        TASK_RESULT_FILTER_ERROR reply (which keeps the result's peer props and cookies)."""
        with self._lock:
            entry = self._client_tasks.get(frame.ref_id)
        if entry is not None:  # the task's data: e.g. ConvertWeights' base weights
            fl_ctx.set_prop(FLContextKey.TASK_DATA, entry[0].task.data, private=True, sticky=False)
        try:
            filtered = self.server.filters.apply(
                self.server, FilterChainType.TASK_RESULT_CHAIN, frame.topic, result, fl_ctx
            )
        except FilterError as exc:
            filtered = exc.reply(like=result)
            fl_ctx.set_prop(FLContextKey.TASK_RESULT, filtered, private=True, sticky=False)
            return filtered
        if filtered is not result and filtered.get_peer_props() is None:
            filtered.set_peer_props(result.get_peer_props())
        return filtered

    def _deliver(self, name: str, frame: Frame) -> TransportError | None:
        """Send one task frame (no scheduler state is touched here: it may run on a sender thread)."""
        try:
            self.server.send_frame(name, frame)
        except TransportError as exc:
            return exc
        return None

    def _sent(self, op: _Op, ct: ClientTask, error: TransportError | None) -> bool:
        if error is None:
            return True
        name = ct.client.name
        self.server.log.warning(
            "task %r could not be sent to %s (%s); it is kept for %s for up to %ss",
            op.task.name,
            name,
            error,
            name,
            self.lost_timeout,
        )
        self._mark_away(name)
        return False

    def _send_batch(self, op: _Op, batch: list[tuple[ClientTask, Frame]], fl_ctx: FLContext) -> None:
        """Send a broadcast's frames side by side, so that a slow site delays only its own task; return when
        every frame is sent or failed (the task data may then change). Each client's after_task_sent_cb runs as
        soon as its own frame is out.

        Called without the lock, so that results are processed while the frames still go out (a 100 MB model
        to 10 sites takes a while); a result that comes before its own frame is confirmed sent waits (in
        ``_early``) until then, so each client's after_task_sent_cb still runs before its result_received_cb.
        """
        if len(batch) == 1:
            ct, frame = batch[0]
            self._one_sent(op, ct, fl_ctx, self._deliver(ct.client.name, frame))
            return
        pool = self.server.sender_pool()
        futures = []
        try:
            for ct, frame in batch:
                futures.append(pool.submit(self._deliver, ct.client.name, frame))
                futures[-1].add_done_callback(lambda f, ct=ct: self._one_sent(op, ct, fl_ctx, _error_of(f)))
        except BaseException:  # the pool is shut down (the run is ending): what was not submitted is not sent
            for ct, _ in batch[len(futures) :]:
                self._one_sent(op, ct, fl_ctx, TransportError("the server is stopping"))
            raise
        finally:
            concurrent.futures.wait(futures)  # each outcome is reported by _one_sent

    def _one_sent(self, op: _Op, ct: ClientTask, fl_ctx: FLContext, error: TransportError | None) -> None:
        """``ct``'s frame went out (``error`` None), or failed."""
        with self._lock:
            try:
                if self._sent(op, ct, error):
                    self._callback(op.task.after_task_sent_cb, "after_task_sent_cb", client_task=ct, fl_ctx=fl_ctx)
            finally:
                self._sending.discard(ct.id)
                early = self._early.pop(ct.id, None)
                if early is not None:
                    self._events.put(("accept", early))

    def _mark_away(self, name: str) -> None:
        if name not in self._dead and name not in self._away:
            self._away[name] = time.time()

    def _advance(self, op: _Op, fl_ctx: FLContext | None = None, raise_errors: bool = False) -> None:
        """send/relay: hand the task to the next target, or end it when none is left."""
        if op.done.is_set():
            return
        fl_ctx = fl_ctx or self.server.new_context()
        while not op.outstanding and not op.held:
            name = self._next_target(op)
            if name is None:
                if op.method == RELAY and op.responded:
                    self._finish(op, TaskCompletionStatus.OK)
                else:
                    self._finish(op, TaskCompletionStatus.CLIENT_DEAD)
                return
            try:
                self._dispatch(op, name, fl_ctx)
            except Exception:
                self._finish(op, TaskCompletionStatus.ERROR)
                if raise_errors:
                    raise
                self.server.log.exception(
                    "task %r could not be sent to %s; the task ends with ERROR", op.task.name, name
                )
                return

    def _next_target(self, op: _Op) -> str | None:
        if op.method == SEND and op.send_order == SendOrder.ANY:
            load = {n: 0 for n in op.targets}
            for other in self._ops.values():
                for n in other.outstanding:
                    if n in load:
                        load[n] += 1
            candidates = [n for n in op.targets if n not in op.tried and n not in self._dead]
            return min(candidates, key=lambda n: load[n]) if candidates else None
        while op.next_index < len(op.targets):
            name = op.targets[op.next_index]
            op.next_index += 1
            if name not in self._dead:
                return name
        return None

    def _evaluate(self, op: _Op, now: float | None = None) -> None:
        """Apply the completion rules of ``op``."""
        if op.done.is_set():
            return
        now = time.time() if now is None else now
        task = op.task
        if task.timeout and task.schedule_time is not None and now - task.schedule_time >= task.timeout:
            self._finish(op, TaskCompletionStatus.TIMEOUT)
            return
        if op.method == BCAST:
            got = len(op.responded)
            if got >= len(op.targets):
                self._finish(op, TaskCompletionStatus.OK)
                return
            if op.min_responses > 0 and got >= op.min_responses:
                if op.min_reached_at is None:
                    op.min_reached_at = now
                if now - op.min_reached_at >= op.wait_after_min:
                    self._finish(op, TaskCompletionStatus.OK)
                    return
            if self._dead and op.min_responses >= 0:
                if not any(n not in op.responded and n not in self._dead for n in op.targets):
                    self._finish(op, TaskCompletionStatus.CLIENT_DEAD)
        elif op.method == RELAY and op.result_timeout:
            for name, ct in list(op.outstanding.items()):
                if ct.task_sent_time is not None and now - ct.task_sent_time >= op.result_timeout:
                    self.server.log.warning(
                        "relay task %r: no result from %s within %ss; moving on", task.name, name, op.result_timeout
                    )
                    self._drop_client_task(op, name, abort=True)
            self._advance(op)

    def _expire_away(self, now: float) -> None:
        """Clients away for longer than ``lost_timeout`` are dead: what waits on them moves on or ends."""
        for name, since in list(self._away.items()):
            if now - since >= self.lost_timeout:
                del self._away[name]
                self._process_dead(name, since)

    def _away_deadline(self) -> float | None:
        return min(self._away.values()) + self.lost_timeout if self._away else None

    def _drop_client_task(self, op: _Op, name: str, abort: bool) -> None:
        ct = op.outstanding.pop(name, None)
        if ct is None:
            return
        self._client_tasks.pop(ct.id, None)
        if abort:
            self._send_abort(name, ct)

    def _send_abort(self, name: str, ct: ClientTask) -> None:
        if name in self._dead:
            return
        try:
            self.server.send_frame(name, Frame(kind=Kind.ABORT_TASK, ref_id=ct.id, topic=ct.task.name))
        except TransportError:
            pass

    def _finish(self, op: _Op, status: TaskCompletionStatus) -> None:
        if op.done.is_set():
            return
        task = op.task
        if task.completion_status is None:
            task.completion_status = status
        if status == TaskCompletionStatus.CLIENT_DEAD:
            self.tasks_ended_dead += 1
        for name in list(op.outstanding):
            self._drop_client_task(op, name, abort=True)
        if op.held:  # never sent: nothing to abort
            self._held = [(o, n) for o, n in self._held if o is not op]
            op.held.clear()
        self._ops.pop(task.id, None)
        task.is_standing = False
        if self.progress is not None:
            self.progress.task_done(task.id)
        fl_ctx = self.server.new_context()
        self._callback(task.task_done_cb, "task_done_cb", task=task, fl_ctx=fl_ctx)
        op.done.set()
        self._wake()

    def _callback(self, cb: Any, what: str, **kwargs: Any) -> None:
        if cb is None:
            return
        try:
            cb(**kwargs)
        except Exception:
            self.server.log.exception("%s %r raised", what, getattr(cb, "__qualname__", cb))

    # the scheduler thread ----------------------------------------------------------------------------
    def _wake(self) -> None:
        self._events.put(("wake", None))

    def _loop(self) -> None:
        bind_thread(self.server.name)
        while not self._stopped:
            timeout = None
            with self._lock:
                deadlines = [d for d in (op.deadline() for op in self._ops.values()) if d is not None]
                away = self._away_deadline()
                if away is not None:
                    deadlines.append(away)
            if deadlines:
                timeout = max(0.0, min(deadlines) - time.time()) + 0.001
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                item = ("wake", None)
            if item is None:
                return
            what, arg = item
            try:
                if what == "result":
                    self._process_result(arg)
                elif what == "accept":
                    self._accept_result(*arg)
                elif what == "up":
                    self._process_up(arg)
                with self._lock:
                    now = time.time()
                    self._expire_away(now)
                    for op in list(self._ops.values()):
                        self._evaluate(op, now)
                    if self._held:
                        self._release_held()
            except Exception:
                self.server.log.exception("task scheduler error while handling %s", what)

    def _process_dead(self, name: str, since: float) -> None:
        self._dead.setdefault(name, since)
        pending = [op.task.name for op in self._ops.values() if name in op.outstanding]
        self.server.log.warning(
            "%s lost its connection %.0fs ago and did not come back; it is dead%s",
            name,
            time.time() - since,
            f" (its tasks {pending} end)" if pending else "",
        )
        self.server.site_dead(name, f"lost its connection and did not come back within {self.lost_timeout}s")
        for op in list(self._ops.values()):
            if name in op.outstanding:
                self._drop_client_task(op, name, abort=False)
                if op.method in (SEND, RELAY):
                    self._advance(op)
            self._evaluate(op)

    def _process_up(self, name: str) -> None:
        with self._lock:
            self._away.pop(name, None)
            self._dead.pop(name, None)
            for op in list(self._ops.values()):
                ct = op.outstanding.get(name)
                if ct is not None:  # it may never have got it, or its result was lost: the same task again
                    self.server.log.info("%s joined again: sending it task %r (%s) again", name, op.task.name, ct.id)
                    self._send_task(op, ct)
                    continue
                missed = name in op.targets and name not in op.responded and name not in op.held
                if op.method == BCAST and missed:
                    self.server.log.info("%s is back: sending it task %r", name, op.task.name)
                    try:
                        self._dispatch(op, name, self.server.new_context())
                    except Exception:
                        self.server.log.exception("task %r could not be sent to %s", op.task.name, name)

    def _process_result(self, frame: Frame) -> None:
        name = frame.sender
        with self._queued_lock:
            left = self._queued_results.get(name, 1) - 1
            if left > 0:
                self._queued_results[name] = left
            else:
                self._queued_results.pop(name, None)
        try:
            result = frame_shareable(frame, self.server.tensor_device)
        except CodecError as exc:
            self.server.log.error("result of task %r from %s cannot be decoded: %s", frame.topic, name, exc)
            result = make_reply(ReturnCode.COMMUNICATION_ERROR, {ReservedHeaderKey.ERROR: str(exc)})
        props = result.get_peer_props()
        props = dict(props) if isinstance(props, dict) else {}
        props[ReservedKey.IDENTITY_NAME] = name
        result.set_peer_props(props)
        fl_ctx = self.server.new_context()
        fl_ctx.set_peer_context(peer_context_from_props(props))
        fl_ctx.set_prop(FLContextKey.TASK_NAME, frame.topic, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.TASK_ID, frame.ref_id, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.TASK_RESULT, result, private=True, sticky=False)
        result = self._filter_result(frame, result, fl_ctx)
        self._accept_result(frame, result, fl_ctx)

    def _accept_result(self, frame: Frame, result: Shareable, fl_ctx: FLContext) -> None:
        """Match a decoded, filtered result to its client task and run the task's callbacks on it."""
        name = frame.sender
        with self._lock:
            entry = self._client_tasks.get(frame.ref_id)
            if entry is None or entry[1].client.name != name or entry[0].done.is_set():
                self.server.result_of_unknown_task(name, frame.topic, frame.ref_id, result, fl_ctx)
                return
            op, ct = entry
            if ct.id in self._sending:  # its frame is still being confirmed sent: after that (see _send_batch)
                if ct.id in self._early:  # a second result for the same task before the first was taken
                    self.server.result_of_unknown_task(name, frame.topic, frame.ref_id, result, fl_ctx)
                else:
                    self._early[ct.id] = (frame, result, fl_ctx)
                return
            self.results_received += 1
            self._client_tasks.pop(ct.id, None)
            op.outstanding.pop(name, None)
            op.responded.add(name)
            ct.result = result
            ct.result_received_time = time.time()
            if self.progress is not None:
                self.progress.result_in(op.task.id, name)
            self.server.fire_event(EventType.BEFORE_PROCESS_SUBMISSION, fl_ctx)
            self._callback(op.task.result_received_cb, "result_received_cb", client_task=ct, fl_ctx=fl_ctx)
            self.server.fire_event(EventType.AFTER_PROCESS_SUBMISSION, fl_ctx)
            if op.method == SEND:
                self._finish(op, TaskCompletionStatus.OK)
            elif op.method == RELAY:
                self._advance(op, fl_ctx)
            else:
                self._evaluate(op)
