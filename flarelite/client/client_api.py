"""ClientAPI: what one ``flare.init()`` context does (receive, send, log, task queries) over a ClientAPIExchange."""

from __future__ import annotations

import copy
import gc
import logging
import sys
import threading
from typing import Any

from flarelite.app_common.abstract.fl_model import FLModel, ParamsType
from flarelite.app_common.utils.fl_model_utils import FLModelUtils

from .config import ClientConfig, ConfigKey, ExchangeFormat, TransferType
from .converter_utils import FormatConverter, numerical_params_diff
from .exchange import ClientAPIExchange, ExchangeAborted, TaskMessage

_log = logging.getLogger("flarelite.client")


class ClientAPI:
    """The Client API state of one context: the cached received model, the current task, the exchange."""

    def __init__(self, exchange: ClientAPIExchange | None, rank: str, sys_info: dict | None = None) -> None:
        self.exchange = exchange
        self.rank = rank
        self._lock = threading.RLock()
        config = exchange.get_config() if exchange is not None else {}
        if sys_info:
            for key, value in sys_info.items():
                config.setdefault(key, value)
        exchange_cfg = config.get(ConfigKey.TASK_EXCHANGE)
        if isinstance(exchange_cfg, dict):  # over the socket the enums arrive as their strings
            for key, enum in (
                (ConfigKey.EXCHANGE_FORMAT, ExchangeFormat),
                (ConfigKey.SERVER_EXPECTED_FORMAT, ExchangeFormat),
                (ConfigKey.TRANSFER_TYPE, TransferType),
            ):
                if key in exchange_cfg:
                    try:
                        exchange_cfg[key] = enum(exchange_cfg[key])
                    except ValueError:
                        pass
        config.setdefault(ConfigKey.TASK_NAME, None)
        self.config = ClientConfig(config)
        self._converter: FormatConverter | None = None
        if exchange is not None:
            trainer = self.config.get_exchange_format() or ExchangeFormat.RAW
            self._converter = FormatConverter(trainer, self.config.get_server_expected_format())
        self.fl_model: FLModel | None = None
        self.receive_called = False
        self.task: TaskMessage | None = None
        self.task_name: str | None = None
        self._received_params: Any = None
        self._closed = False
        self._sends = 0

    # helpers -----------------------------------------------------------------------------------------------
    def _check_rank0(self, what: str) -> None:
        if self.rank != "0":
            raise RuntimeError(f"only rank 0 can call {what}(); this process is rank {self.rank}")

    def _need_exchange(self, what: str) -> ClientAPIExchange:
        if self.exchange is None:
            raise RuntimeError(
                f"{what}(): rank {self.rank} does not talk to the site; only rank 0 receives and sends models "
                "(share them with the other ranks through your framework's collectives)"
            )
        return self.exchange

    # the API -----------------------------------------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> FLModel | None:
        """Return the current task's model (cached until ``send`` clears it); None when the job is stopping."""
        exchange = self._need_exchange("receive")
        with self._lock:
            if self.fl_model is not None:
                return self.fl_model
            if self._closed:
                return None
            try:
                task = exchange.receive_task(timeout)
            except ExchangeAborted as exc:
                raise RuntimeError(str(exc)) from exc
            if task is None:
                return None
            try:
                model = FLModelUtils.from_shareable(task.data)
                if self._converter is not None and model.params is not None:
                    model.params = self._converter.to_trainer(model.params)
            except Exception as exc:
                raise RuntimeError(f"failed to receive task: {type(exc).__name__}: {exc}") from exc
            self.task = task
            self.task_name = task.task_name
            self.fl_model = model
            self._received_params = model.params
            self.receive_called = True
            return model

    def send(self, model: FLModel, clear_cache: bool = True) -> None:
        """Send ``model`` as the current task's result (see ``flarelite.client.api.send``)."""
        if not isinstance(model, FLModel):
            raise TypeError(f"flare.send expects an FLModel, got {type(model).__name__}")
        exchange = self._need_exchange("send")
        with self._lock:
            if self._closed or (exchange.is_stopped() and self.task is None):
                _log.warning("flare.send() after the Client API was closed (the job ended): the model is dropped")
                return
            if not self.receive_called or self.task is None:
                raise RuntimeError('"receive" needs to be called before sending model!')
            if model.params is None and model.metrics is None:
                raise RuntimeError("the FLModel to send has neither params nor metrics")
            params, params_type = model.params, model.params_type
            if params is not None:
                if params_type is None:
                    params_type = ParamsType.FULL
                if (
                    self.config.get_transfer_type() == TransferType.DIFF
                    and ParamsType(params_type) == ParamsType.FULL
                    and self._received_params is not None  # e.g. submit_model: nothing to take a difference to
                ):
                    params = numerical_params_diff(self._received_params, params)
                    params_type = ParamsType.DIFF
                if self._converter is not None:
                    params = self._converter.to_server(params)
            out = FLModel(
                params_type=params_type if params is not None else None,
                params=params,
                metrics=model.metrics,
                start_round=model.start_round,
                current_round=model.current_round,
                total_rounds=model.total_rounds,
                meta=model.meta,
            )
            shareable = FLModelUtils.to_shareable(out)
            task = self.task
            delivered = exchange.send_result(task.task_id, shareable)
            if not delivered:
                _log.warning(
                    "result of task %r (%s) dropped: the task was aborted or the job is stopping",
                    task.task_name,
                    task.task_id,
                )
            if clear_cache:
                model.params = None
                model.optimizer_params = None
                if self.fl_model is not None:
                    self.fl_model.params = None
                    self.fl_model.optimizer_params = None
                self.clear()
            self._sends += 1
            self._collect_garbage()

    def _collect_garbage(self) -> None:
        rounds = self.config.get_memory_gc_rounds()
        if rounds <= 0 or self._sends % rounds:
            return
        gc.collect()
        if self.config.get_cuda_empty_cache():
            torch = sys.modules.get("torch")  # only when the script uses torch already
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()

    def clear(self) -> None:
        """Drop the cached received model and the receive flag."""
        with self._lock:
            self.fl_model = None
            self.receive_called = False
            self.task = None
            self._received_params = None

    def is_running(self) -> bool:
        """Block like ``receive``; True when a task is available, False when the job is stopping."""
        return self.receive() is not None

    def system_info(self) -> dict:
        """Return ``{"site_name", "job_id"}``."""
        cfg = self.config.get_config()
        return {"site_name": cfg.get("site_name"), "job_id": cfg.get("job_id")}

    def get_config(self) -> dict:
        """Return a copy of the config taken at ``init``."""
        return copy.deepcopy(self.config.get_config())

    def get_job_id(self) -> str:
        """Return the job id."""
        return self.config.get_config().get("job_id")

    def get_site_name(self) -> str:
        """Return the site name."""
        return self.config.get_config().get("site_name")

    def get_task_name(self) -> str | None:
        """Return the current task's name (rank 0 only)."""
        self._check_rank0("get_task_name")
        return self.task_name

    def is_train(self) -> bool:
        """True when the current task is the training task (rank 0 only)."""
        self._check_rank0("is_train")
        return self.task_name is not None and self.task_name == self.config.get_train_task()

    def is_evaluate(self) -> bool:
        """True when the current task is the evaluation task (rank 0 only)."""
        self._check_rank0("is_evaluate")
        return self.task_name is not None and self.task_name == self.config.get_eval_task()

    def is_submit_model(self) -> bool:
        """True when the current task is the submit-model task (rank 0 only)."""
        self._check_rank0("is_submit_model")
        return self.task_name is not None and self.task_name == self.config.get_submit_model_task()

    def log(self, key: str, value: Any, data_type: Any, **kwargs: Any) -> None:
        """Send one metric record to the executor (rank 0 only; dropped with a warning once closed)."""
        self._check_rank0("log")
        exchange = self._need_exchange("log")
        if self._closed or exchange.is_stopped():
            _log.warning("flare.log(%r) after the Client API was closed (the job ended): dropped", key)
            return
        data_type_value = getattr(data_type, "value", data_type)
        kwargs = {k: getattr(v, "value", v) if k == "writer" else v for k, v in kwargs.items()}
        exchange.send_log({"key": key, "value": value, "data_type": data_type_value, "kwargs": kwargs})

    def shutdown(self) -> None:
        """Stop this context and tell the executor the trainer is done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.exchange is not None:
            self.exchange.shutdown()
