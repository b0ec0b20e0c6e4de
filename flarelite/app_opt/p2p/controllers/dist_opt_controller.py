"""DistOptController: tells each site its neighbours, then has every site run the algorithm."""

from __future__ import annotations

from flarelite.apis.controller_spec import ClientTask, Task, TaskCompletionStatus
from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import ReservedHeaderKey, Shareable
from flarelite.apis.signal import Signal

from ..types import Config, LocalConfig
from ..utils.topology import validate_network

CONFIG_TASK = "config"
RUN_ALGORITHM_TASK = "run_algorithm"


def _describe(result: Shareable | None) -> str:
    if result is None:
        return "no result"
    rc = result.get_return_code()
    error = result.get_header(ReservedHeaderKey.ERROR)
    return f"{rc}: {error}" if error else str(rc)


class DistOptController(Controller):
    """Runs a peer-to-peer distributed optimization algorithm on the network of ``config``.

    1. Sends each site of the network its ``LocalConfig`` (its neighbours with their weights, the sites it
       sends to, and ``config.extra``) in a ``config`` task, one site after the other (``send_and_wait``).
    2. Broadcasts ``run_algorithm`` with ``config.extra`` as the data and waits until every site is done.

    A site that fails either task (or leaves) ends the run at once with an error that names it.

    Parameters:
        config: the network and the algorithm's parameters (e.g. ``{"iterations": 100}``); a dict in
            ``Config.to_dict()`` form is accepted too.
        task_check_period: accepted for NVFlare compatibility.

    Raises:
        ValueError: the network is malformed (unknown neighbours, self-loops, repeated ids, invalid weights).
    """

    def __init__(self, config: Config, task_check_period: float = 0.2) -> None:
        super().__init__(task_check_period=task_check_period)
        if isinstance(config, dict):
            config = Config.from_dict(config)
        if not isinstance(config, Config):
            raise TypeError(f"DistOptController: config must be a Config, got {type(config).__name__}")
        validate_network(config.network, require_weights=False)
        self.config = config
        self._abort_signal: Signal | None = None

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Log the network's size."""
        self.log_info(fl_ctx, f"{type(self).__name__} started: {len(self.config.network.nodes)} sites")

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Log the end of the workflow."""
        self.log_info(fl_ctx, f"{type(self).__name__} stopped")

    def _aborted(self, abort_signal: Signal | None) -> bool:
        return abort_signal is not None and abort_signal.triggered

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Send every site its config, then run the algorithm on all of them."""
        self._abort_signal = abort_signal
        network = self.config.network
        targets = [node.id for node in network.nodes]
        engine = fl_ctx.get_engine()
        clients = [c.name for c in engine.get_clients()] if hasattr(engine, "get_clients") else None
        if clients is not None:
            unknown = [t for t in targets if t not in clients]
            if unknown:
                self.system_panic(
                    f"network nodes {unknown} are not client sites of this job (its sites are {clients}); "
                    "name the nodes after the sites (site-1, site-2, ...)",
                    fl_ctx,
                )
                return
            idle = [c for c in clients if c not in targets]
            if idle:
                self.log_warning(fl_ctx, f"sites {idle} are not in the network and take no part in the algorithm")

        for node in network.nodes:
            if self._aborted(abort_signal):
                return
            local = LocalConfig(
                neighbors=node.neighbors, extra=dict(self.config.extra), out_neighbors=network.out_neighbors(node.id)
            )
            task = Task(name=CONFIG_TASK, data=DXO(data_kind=DataKind.APP_DEFINED, data=local.to_dict()).to_shareable())
            self.send_and_wait(task=task, targets=[node.id], fl_ctx=fl_ctx, abort_signal=abort_signal)
            if self._aborted(abort_signal):
                return
            result = task.client_tasks[-1].result if task.client_tasks else None
            if result is None or result.get_return_code() != ReturnCode.OK:
                status = task.completion_status.value if task.completion_status else "?"
                self.system_panic(
                    f"site {node.id} failed the {CONFIG_TASK!r} task ({_describe(result)}; task status {status})",
                    fl_ctx,
                )
                return
        self.log_info(fl_ctx, f"sent the network config to {len(targets)} sites; running the algorithm")

        task = Task(
            name=RUN_ALGORITHM_TASK,
            data=DXO(data_kind=DataKind.APP_DEFINED, data=dict(self.config.extra)).to_shareable(),
            result_received_cb=self._on_algorithm_result,
        )
        self.broadcast_and_wait(task=task, targets=targets, min_responses=0, fl_ctx=fl_ctx, abort_signal=abort_signal)
        if self._aborted(abort_signal):
            return
        answered = {ct.client.name for ct in task.client_tasks if ct.result is not None}
        missing = [t for t in targets if t not in answered]
        if missing or task.completion_status not in (None, TaskCompletionStatus.OK):
            status = task.completion_status.value if task.completion_status else "?"
            self.system_panic(
                f"the {RUN_ALGORITHM_TASK!r} task ended with status {status}; no result from {missing or 'none'}",
                fl_ctx,
            )
            return
        self.log_info(fl_ctx, f"all {len(targets)} sites finished the algorithm")

    def _on_algorithm_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        result = client_task.result
        if result is None or result.get_return_code() == ReturnCode.OK:
            return
        if self._aborted(self._abort_signal) and result.get_return_code() == ReturnCode.TASK_ABORTED:
            return  # a consequence of the failure that ended the run, not a new one
        self.system_panic(
            f"site {client_task.client.name} failed the {RUN_ALGORITHM_TASK!r} task ({_describe(result)})", fl_ctx
        )
