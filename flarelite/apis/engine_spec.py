"""The engine contract: what a component may ask of the site it runs in (``fl_ctx.get_engine()``).

The runtime implements it; components never see transports or processes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .client import Client
    from .fl_context import FLContext
    from .shareable import Shareable

AuxHandler = Callable[..., "Shareable"]


class EngineSpec(ABC):
    """Services of a running site: contexts, events, components and aux messaging."""

    @abstractmethod
    def new_context(self) -> FLContext:
        """Return a new FLContext for this site."""

    @abstractmethod
    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Fire ``event_type`` to every component of this site."""

    @abstractmethod
    def get_component(self, component_id: str) -> Any:
        """Return the component with this id, or None."""

    @abstractmethod
    def get_all_components(self) -> dict:
        """Return ``{id: component}`` of this site."""

    @abstractmethod
    def register_aux_message_handler(self, topic: str, message_handle_func: AuxHandler) -> None:
        """Register ``message_handle_func(topic, request, fl_ctx) -> Shareable`` for ``topic``.

        Raises:
            ValueError: ``topic`` is empty or already has a handler, or the function is not callable.
        """

    @abstractmethod
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
        """Send ``request`` to ``targets`` and return ``{site: reply}``, one entry per target.

        Parameters:
            targets: site names, one name, ``"server"``, or None / ``"@ALL"`` for every other party.
            topic: the topic the receivers' handlers are registered for.
            request: the Shareable to send.
            timeout: seconds to wait for the replies; ``<= 0`` sends without waiting and returns ``{}``.
            fl_ctx: the caller's context (its public props travel as the request's peer props).
            optional: log failures at debug level instead of error.
            secure: accepted for compatibility; transport security is configured on the protocol.
        """

    @abstractmethod
    def multicast_aux_requests(
        self,
        topic: str,
        target_requests: dict[str, Shareable],
        timeout: float,
        fl_ctx: FLContext,
        optional: bool = False,
        secure: bool = False,
    ) -> dict[str, Shareable]:
        """Send a different request to each target; replies as in ``send_aux_request``."""

    @abstractmethod
    def abort_run(self, reason: str, fl_ctx: FLContext | None = None) -> None:
        """End the run now because of ``reason``; the run is reported as failed."""

    @abstractmethod
    def set_tensor_device(self, device: Any) -> None:
        """Put the torch tensors this site receives on ``device`` (``"cuda"``, ``"cuda:1"``...; None: the CPU).

        A flarelite addition. Tensors travel through host memory; by default they arrive on the CPU. Call it
        at ``EventType.START_RUN`` (e.g. next to ``register_aux_message_handler``): it applies to every
        Shareable decoded afterwards (tasks, results, aux requests and replies).
        """


class ServerEngineSpec(EngineSpec):
    """The server's engine: adds the list of client sites."""

    @abstractmethod
    def get_clients(self) -> list[Client]:
        """Return the job's client sites."""
