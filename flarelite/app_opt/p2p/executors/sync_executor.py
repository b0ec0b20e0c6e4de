"""SyncAlgorithmExecutor: synchronous rounds of "send my value, wait for my neighbours' values" over aux."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from flarelite.apis.signal import Signal

from .base_dist_opt_executor import AlgorithmStopped, BaseDistOptExecutor

NEIGHBOR_VALUE_TOPIC = "neighbor_value"
_POLL = 0.05  # seconds between checks of the abort signal while waiting


class SyncAlgorithmExecutor(BaseDistOptExecutor):
    """Base of synchronous peer-to-peer algorithms: at each iteration every site exchanges values with its peers.

    ``_exchange_values(fl_ctx, value, iteration)`` sends ``value`` to the sites this one sends to (its
    out-neighbours; in an undirected network, its neighbours) through aux (topic ``"neighbor_value"``, each
    delivery acknowledged), then waits until the value of every neighbour it receives from (its
    in-neighbours) has arrived for ``iteration``. The values are in ``self.neighbors_values[iteration]``
    (``{neighbour id: value}``) and are also returned. Values that arrive early (for a later iteration) are
    kept; those of earlier iterations are freed.

    A neighbour that does not take the value, or whose value does not come within ``sync_timeout`` seconds,
    ends the run (``system_panic``) with an error that names it. The task's abort signal is honoured while
    waiting: ``run_algorithm`` then ends and the task is answered ``TASK_ABORTED``.

    Parameters:
        sync_timeout: seconds to wait for a neighbour's value (and for a neighbour to take ours).
    """

    def __init__(self, sync_timeout: float = 10) -> None:
        super().__init__()
        if isinstance(sync_timeout, bool) or not isinstance(sync_timeout, (int, float)) or sync_timeout <= 0:
            raise ValueError(f"sync_timeout must be a positive number of seconds, got {sync_timeout!r}")
        self.sync_timeout = sync_timeout
        self.neighbors_values: defaultdict[int, dict[Any, Any]] = defaultdict(dict)
        self.lock = threading.Lock()
        self._arrived = threading.Condition(self.lock)
        self._oldest_kept = 0
        self._abort_signal: Signal | None = None
        self._strangers: set[Any] = set()

    # the exchange ------------------------------------------------------------------------------------
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """As BaseDistOptExecutor.execute; remembers the task's abort signal for ``_exchange_values``."""
        if task_name == "run_algorithm":
            self._abort_signal = abort_signal
        return super().execute(task_name, shareable, fl_ctx, abort_signal)

    def _aborted(self, fl_ctx: FLContext) -> bool:
        signal = self._abort_signal or fl_ctx.get_run_abort_signal()
        return signal is not None and signal.triggered

    def _fail(self, fl_ctx: FLContext, reason: str) -> AlgorithmStopped:
        if self._aborted(fl_ctx):  # the run is already ending for another reason
            return AlgorithmStopped(f"run aborted ({reason})", ReturnCode.TASK_ABORTED)
        self.system_panic(reason, fl_ctx)
        return AlgorithmStopped(reason)

    def _exchange_values(self, fl_ctx: FLContext, value: Any, iteration: int) -> dict[Any, Any]:
        """Send ``value`` for ``iteration`` to the out-neighbours; return the in-neighbours' values for it.

        Raises:
            AlgorithmStopped: the run was aborted, or a neighbour failed (the run then ends, naming it).
        """
        me = fl_ctx.get_identity_name()
        if self.config is None:
            raise AlgorithmStopped(f"{me}: _exchange_values called before the 'config' task")
        with self._arrived:
            for old in [k for k in self.neighbors_values if k < iteration]:
                del self.neighbors_values[old]
            self._oldest_kept = max(self._oldest_kept, iteration)

        targets = [str(t) for t in self.config.send_targets()]
        if targets:
            request = DXO(
                data_kind=DataKind.APP_DEFINED, data={"value": self._to_message(value), "iteration": iteration}
            ).to_shareable()
            replies = fl_ctx.get_engine().send_aux_request(
                targets=targets, topic=NEIGHBOR_VALUE_TOPIC, request=request, timeout=self.sync_timeout, fl_ctx=fl_ctx
            )
            failed = []
            for target in targets:
                reply = replies.get(target)
                rc = reply.get_return_code() if reply is not None else "no reply"
                if rc != ReturnCode.OK:
                    error = reply.get_header(ReservedHeaderKey.ERROR) if reply is not None else None
                    failed.append(f"{target} ({rc}{': ' + error if error else ''})")
            if failed:
                if self._aborted(fl_ctx):
                    raise AlgorithmStopped("run aborted while sending values", ReturnCode.TASK_ABORTED)
                raise self._fail(
                    fl_ctx,
                    f"{me} could not deliver its value for iteration {iteration} to {', '.join(failed)}; "
                    f"every site of the network must run a {SyncAlgorithmExecutor.__name__}",
                )

        expected = [n.id for n in self.neighbors]
        deadline = time.monotonic() + self.sync_timeout
        with self._arrived:
            while True:
                got = self.neighbors_values.get(iteration, {})
                missing = [n for n in expected if n not in got]
                if not missing:
                    return {n: got[n] for n in expected}
                if self._aborted(fl_ctx):
                    raise AlgorithmStopped(f"run aborted while waiting for {missing}", ReturnCode.TASK_ABORTED)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(min(remaining, _POLL))
        hint = ""
        if self._strangers:
            hint = (
                f"; values came instead from {sorted(map(str, self._strangers))}, which are not among its neighbours: "
                "is the network directed? Use DistOptController, which tells every site whom to send to"
            )
        raise self._fail(
            fl_ctx,
            f"{me} got no value from neighbour(s) {', '.join(map(str, missing))} for iteration {iteration} "
            f"within {self.sync_timeout}s (sync_timeout){hint}",
        )

    def _handle_neighbor_value(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        """Store a neighbour's value for its iteration and wake ``_exchange_values``."""
        sender = request.get_peer_prop(ReservedKey.IDENTITY_NAME, None)
        try:
            data = from_shareable(request).data
            iteration = data["iteration"]
            value = self._from_message(data["value"])
        except (KeyError, TypeError, ValueError) as exc:
            self.log_error(fl_ctx, f"bad neighbour value from {sender}: {exc!r}")
            return make_reply(ReturnCode.BAD_REQUEST_DATA, {ReservedHeaderKey.ERROR: f"bad neighbour value: {exc!r}"})
        if isinstance(iteration, bool) or not isinstance(iteration, int):
            return make_reply(ReturnCode.BAD_REQUEST_DATA, {ReservedHeaderKey.ERROR: "iteration must be an int"})
        config = self.config
        stranger = config is not None and sender not in {n.id for n in config.neighbors}
        with self._arrived:
            first_time = stranger and sender not in self._strangers
            if first_time:
                self._strangers.add(sender)
        if first_time and config is not None:
            self.log_warning(
                fl_ctx,
                f"value from {sender}, which is not a neighbour of this site ({[n.id for n in config.neighbors]}); "
                "it is kept but not used",
            )
        with self._arrived:
            if iteration < self._oldest_kept:
                self.log_warning(fl_ctx, f"late value from {sender} for iteration {iteration} dropped")
            else:
                self.neighbors_values[iteration][sender] = value
                self._arrived.notify_all()
        return make_reply(ReturnCode.OK)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """At START_RUN register the handler of neighbours' values."""
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler(
                topic=NEIGHBOR_VALUE_TOPIC, message_handle_func=self._handle_neighbor_value
            )
