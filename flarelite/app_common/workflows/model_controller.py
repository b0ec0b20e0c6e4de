"""ModelController: the FLModel workflow API a user's ``run()`` is written against."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

from ...apis.client import Client
from ..abstract.fl_model import FLModel
from ..app_constant import AppConstants
from .base_model_controller import BaseModelController


class ModelController(BaseModelController, ABC):
    """Write ``run()``; send models with ``send_model_and_wait`` / ``send_model``; load and save the global model.

    A typical ``run()``::

        model = self.load_model()
        for r in range(num_rounds):
            model.current_round = r
            results = self.send_model_and_wait(targets=self.sample_clients(2), data=model)
            ...  # aggregate the results into model.params
            self.save_model(model)
    """

    def __init__(self, *args: Any, persistor_id: str = AppConstants.DEFAULT_PERSISTOR_ID, **kwargs: Any) -> None:
        super().__init__(*args, persistor_id=persistor_id, **kwargs)

    def send_model_and_wait(
        self,
        task_name: str = AppConstants.TASK_TRAIN,
        data: FLModel | None = None,
        targets: list[str] | list[Client] | None = None,
        min_responses: int | None = None,
        timeout: int = 0,
    ) -> list[FLModel]:
        """Send ``data`` to ``targets`` (None: all clients) and return their results as FLModels.

        ``min_responses=None`` waits for every target; ``timeout`` 0 never times out. Each result's
        ``meta["client_name"]`` is its sender and ``meta["props"]`` the meta of the model that was sent.
        """
        return self.broadcast_model(
            task_name=task_name, data=data, targets=targets, min_responses=min_responses, timeout=timeout
        )

    def send_model(
        self,
        task_name: str = AppConstants.TASK_TRAIN,
        data: FLModel | None = None,
        targets: list[str] | list[Client] | None = None,
        min_responses: int | None = None,
        timeout: int = 0,
        callback: Callable[[FLModel], Any] | None = None,
    ) -> None:
        """Send ``data`` without waiting; ``callback(model)`` runs for each result on the result thread.

        Wait for the task to end with ``wait_for_standing_tasks()`` (or poll ``get_num_standing_tasks()``).
        A callback that returns False marks its result as not accepted.
        """
        self.broadcast_model(
            task_name=task_name,
            data=data,
            targets=targets,
            min_responses=min_responses,
            timeout=timeout,
            blocking=False,
            callback=callback,
        )

    @abstractmethod
    def run(self) -> None:
        """The workflow."""

    def load_model(self) -> FLModel:
        """Return the initial model (see BaseModelController.load_model)."""
        return super().load_model()

    def save_model(self, model: FLModel) -> None:
        """Save ``model`` with the persistor."""
        super().save_model(model)

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        """Return all client names or a random subset of ``num_clients``."""
        return super().sample_clients(num_clients)
