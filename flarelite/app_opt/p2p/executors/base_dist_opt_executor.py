"""BaseDistOptExecutor: the site side of DistOptController's two tasks, ``config`` and ``run_algorithm``."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

from flarelite.apis.dxo import from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from flarelite.apis.signal import Signal

from ..types import LocalConfig, Neighbor


class AlgorithmStopped(Exception):
    """Raised inside ``run_algorithm`` to end it early; the task is answered with ``return_code``."""

    def __init__(self, reason: str, return_code: str = ReturnCode.EXECUTION_EXCEPTION) -> None:
        super().__init__(reason)
        self.reason = reason
        self.return_code = return_code


class BaseDistOptExecutor(Executor, ABC):
    """Base of the executors of peer-to-peer distributed optimization algorithms.

    On ``config`` it stores the site's ``LocalConfig`` (``self.config``, ``self.neighbors``) and the weight it
    keeps for its own value (``self._weight = 1 - sum of the neighbours' weights``, None if a weight is
    missing). On ``run_algorithm`` it calls ``_pre_algorithm_run``, ``run_algorithm`` and
    ``_post_algorithm_run`` with the task's data (the controller's ``config.extra``).

    Subclasses implement ``run_algorithm``, ``_exchange_values`` and ``_handle_neighbor_value``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.id: int | None = None
        self.client_name: str | None = None
        self.config: LocalConfig | None = None
        self._weight: float | None = None
        self.neighbors: list[Neighbor] = []

    # tasks -------------------------------------------------------------------------------------------
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Handle ``config`` and ``run_algorithm``; other task names get ``TASK_UNKNOWN``."""
        if task_name == "config":
            return self._configure(shareable, fl_ctx)
        if task_name == "run_algorithm":
            if self.config is None:
                return self._error(
                    fl_ctx, ReturnCode.EXECUTION_EXCEPTION, "got 'run_algorithm' before its 'config' task"
                )
            try:
                self._pre_algorithm_run(fl_ctx, shareable, abort_signal)
                self.run_algorithm(fl_ctx, shareable, abort_signal)
                if abort_signal.triggered:
                    self.log_info(fl_ctx, "the algorithm was aborted")
                self._post_algorithm_run(fl_ctx, shareable, abort_signal)
            except AlgorithmStopped as stop:
                if stop.return_code == ReturnCode.TASK_ABORTED:
                    self.log_info(fl_ctx, f"the algorithm stopped: {stop.reason}")
                    return make_reply(ReturnCode.TASK_ABORTED, {ReservedHeaderKey.ERROR: stop.reason})
                return self._error(fl_ctx, stop.return_code, stop.reason)
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            return make_reply(ReturnCode.OK)
        self.log_warning(fl_ctx, f"unknown task name {task_name!r}; this executor handles 'config' and 'run_algorithm'")
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def _error(self, fl_ctx: FLContext, rc: str, reason: str) -> Shareable:
        self.log_error(fl_ctx, reason)
        return make_reply(rc, {ReservedHeaderKey.ERROR: reason})

    def _configure(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            data = from_shareable(shareable).data
            config = data if isinstance(data, LocalConfig) else LocalConfig.from_dict(data)
        except (TypeError, ValueError) as exc:
            return self._error(fl_ctx, ReturnCode.BAD_TASK_DATA, f"invalid 'config' task data: {exc}")
        me = fl_ctx.get_identity_name()
        if any(n.id == me for n in config.neighbors) or me in config.send_targets():
            return self._error(fl_ctx, ReturnCode.BAD_TASK_DATA, f"{me} is listed as its own neighbour")
        self.config = config
        self.neighbors = config.neighbors
        weights = [n.weight for n in self.neighbors]
        self._weight = None if any(w is None for w in weights) else 1.0 - sum(w for w in weights if w is not None)
        self.log_info(
            fl_ctx,
            f"config: receives from {[n.id for n in self.neighbors]}, sends to {config.send_targets()}, "
            f"own weight {self._weight}",
        )
        return make_reply(ReturnCode.OK)

    # the algorithm -----------------------------------------------------------------------------------
    @abstractmethod
    def run_algorithm(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Run the algorithm (``shareable`` holds the controller's ``config.extra`` as a DXO)."""

    def _pre_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Called before ``run_algorithm``; the default does nothing."""

    def _post_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Called after ``run_algorithm`` returned (also when it stopped because of an abort)."""

    @abstractmethod
    def _exchange_values(self, fl_ctx: FLContext, value: Any, *args: Any, **kwargs: Any) -> Any:
        """Send ``value`` to the neighbours and collect theirs."""

    @abstractmethod
    def _handle_neighbor_value(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        """Aux handler: receive a neighbour's value."""

    def _to_message(self, x: Any) -> Any:
        """Return ``x`` in a form the codec carries (the default sends it as it is)."""
        return x

    def _from_message(self, x: Any) -> Any:
        """Return the value a neighbour sent (inverse of ``_to_message``)."""
        return x

    # helpers -----------------------------------------------------------------------------------------
    def _require_weights(self) -> float:
        """Return ``self._weight``; raise AlgorithmStopped naming the neighbour when a weight is missing."""
        if self._weight is None:
            missing = [n.id for n in self.neighbors if n.weight is None]
            raise AlgorithmStopped(
                f"{type(self).__name__} mixes its neighbours' values but neighbours {missing} have no weight; set "
                "Neighbor(id, weight=...) or build the network with flarelite.app_opt.p2p.utils"
            )
        return self._weight

    @staticmethod
    def _extra(shareable: Shareable, key: str, default: Any = None, required: bool = True) -> Any:
        """Return ``config.extra[key]`` from the ``run_algorithm`` data; AlgorithmStopped when required and absent."""
        data = from_shareable(shareable).data
        if not isinstance(data, dict) or key not in data:
            if required:
                raise AlgorithmStopped(
                    f"the 'run_algorithm' data has no {key!r}: put it in Config(extra={{{key!r}: ...}})",
                    ReturnCode.BAD_TASK_DATA,
                )
            return default
        return data[key]

    @staticmethod
    def _site_dir(fl_ctx: FLContext) -> str:
        """Return this site's own folder (its run directory, else the working directory)."""
        return fl_ctx.get_run_dir() or os.getcwd()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """At START_RUN remember the site's name (and its number, for names like ``site-3``)."""
        if event_type == EventType.START_RUN:
            self.client_name = fl_ctx.get_identity_name()
            _, _, number = self.client_name.rpartition("-")
            self.id = int(number) if number.isdigit() else None
