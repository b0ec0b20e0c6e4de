"""Client executors and a user ModelController for the app_common workflow tests (numpy only).

They live in a module file so FedJob copies them to the job's custom/ folder and process-mode sites import
them. In memory mode every site runs in the test's process, so ``VISITS`` shows the test what the sites saw.
"""

from __future__ import annotations

import threading

import numpy as np

from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import FLMetaKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal
from flarelite.app_common.abstract.fl_model import FLModel
from flarelite.app_common.app_constant import AppConstants
from flarelite.app_common.np.constants import NPConstants
from flarelite.app_common.utils.fl_model_utils import FLModelUtils
from flarelite.app_common.workflows.model_controller import ModelController

VISITS: list[tuple[str, int | None, float]] = []  # (site, round header, first value received)
_lock = threading.Lock()


class AddTrainer(Executor):
    """Answers "train" with the received params plus ``add[site]`` (default 1.0) and ``NUM_STEPS = steps[site]``.

    ``metrics`` adds ``{"accuracy": 10 * (current_round + 1)}``; sites in ``fail_sites`` answer
    EXECUTION_EXCEPTION; ``extra_key_sites`` also send a param ``"extra"`` of 100 * add.
    """

    def __init__(
        self,
        add: dict | None = None,
        steps: dict | None = None,
        fail_sites: list | None = None,
        metrics: bool = False,
        extra_key_sites: list | None = None,
    ) -> None:
        super().__init__()
        self.add = add
        self.steps = steps
        self.fail_sites = fail_sites
        self.metrics = metrics
        self.extra_key_sites = extra_key_sites

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        site = fl_ctx.get_identity_name()
        if site in (self.fail_sites or []):
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        model = FLModelUtils.from_shareable(shareable)
        delta = float((self.add or {}).get(site, 1.0))
        received = model.params or {}
        first = float(np.asarray(received[NPConstants.NUMPY_KEY]).flat[0]) if NPConstants.NUMPY_KEY in received else 0
        with _lock:
            VISITS.append((site, model.current_round, first))
        params = {k: np.asarray(v, dtype=np.float64) + delta for k, v in received.items() if k != "extra"}
        if site in (self.extra_key_sites or []):
            params["extra"] = np.array([100.0 * delta])
        meta = {}
        if site in (self.steps or {}):
            meta[FLMetaKey.NUM_STEPS_CURRENT_ROUND] = self.steps[site]
        metrics = {"accuracy": 10.0 * ((model.current_round or 0) + 1)} if self.metrics else None
        return FLModelUtils.to_shareable(FLModel(params=params, metrics=metrics, meta=meta))


class LocalModelSubmitter(Executor):
    """Answers "submit_model" with a WEIGHTS DXO of its local model: ``[[k, 2k], [3k, 4k]]`` for site-k."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if shareable.get_header(AppConstants.SUBMIT_MODEL_NAME) != "best_model":
            return make_reply(ReturnCode.BAD_TASK_DATA)
        k = float(fl_ctx.get_identity_name().split("-")[-1])
        return DXO(DataKind.WEIGHTS, {NPConstants.NUMPY_KEY: np.array([[k, 2 * k], [3 * k, 4 * k]])}).to_shareable()


class FLModelSiteExecutor(Executor):
    """FLModel tasks for CrossSiteEval: "submit_model" returns ``[site number]``, "validate" the sum of params."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        model = FLModelUtils.from_shareable(shareable)
        if task_name == AppConstants.TASK_SUBMIT_MODEL:
            k = float(fl_ctx.get_identity_name().split("-")[-1])
            return FLModelUtils.to_shareable(FLModel(params={"w": np.array([k])}))
        if task_name == AppConstants.TASK_VALIDATION:
            total = float(sum(np.sum(np.asarray(v)) for v in (model.params or {}).values()))
            return FLModelUtils.to_shareable(FLModel(metrics={"sum": total}))
        return make_reply(ReturnCode.TASK_UNKNOWN)


class MeanController(ModelController):
    """A user workflow that writes only run(): ``rounds`` rounds of an unweighted mean over ``n`` clients."""

    def __init__(self, rounds: int = 2, n: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds = rounds
        self.n = n

    def run(self) -> None:
        model = self.load_model()
        for r in range(self.rounds):
            model.current_round = r
            results = self.send_model_and_wait(targets=self.sample_clients(self.n), data=model)
            keys = results[0].params.keys()
            model.params = {k: np.mean([res.params[k] for res in results], axis=0) for k in keys}
            self.save_model(model)


def reset() -> None:
    """Forget what the sites recorded."""
    with _lock:
        VISITS.clear()
