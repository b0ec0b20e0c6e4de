"""Tiny components for the FedJob tests: a controller that broadcasts "hello", an executor that answers OK."""

import json  # noqa: F401  (stdlib: must not be copied)

import numpy  # noqa: F401  (installed package: must not be copied)
from fixpkg.sub import leaf  # noqa: F401  (a local package: its __init__ files and module are copied)
from helpers_mod import HELLO_TASK, greeting

from flarelite.apis.controller_spec import Task
from flarelite.apis.executor import Executor
from flarelite.apis.fl_component import FLComponent
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal

try:
    import not_installed_anywhere_xyz  # noqa: F401  (cannot be found: FedJob skips it without error)
except ImportError:
    pass


class HelloController(Controller):
    """Broadcasts one "hello" task to every client and waits for all of them."""

    def __init__(self, rounds: int = 1, note: str = "", task_check_period: float = 0.2):
        super().__init__(task_check_period=task_check_period)
        self.rounds = rounds
        self._note = note

    def start_controller(self, fl_ctx: FLContext) -> None:
        pass

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        for _ in range(self.rounds):
            self.broadcast_and_wait(task=Task(name=HELLO_TASK, data=Shareable()), fl_ctx=fl_ctx, min_responses=0)


class HelloExecutor(Executor):
    """Answers every task with OK and logs a greeting."""

    def __init__(self, greeting_prefix: str = "hi", options: dict | None = None):
        super().__init__()
        self.greeting_prefix = greeting_prefix
        self.options = options

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        self.log_info(fl_ctx, f"{self.greeting_prefix}: {greeting(fl_ctx.get_identity_name())}")
        return make_reply(ReturnCode.OK)


class Model:
    """A plain (non-FL) component with a required argument, recorded as a nested {path, args}."""

    def __init__(self, width: int, activation: str = "relu"):
        self.width = width
        self.activation = activation


class ModelExecutor(Executor):
    """An executor holding a nested component."""

    def __init__(self, model: Model, lr: float = 0.1, shape: tuple = (1, 2)):
        super().__init__()
        self.model = model
        self._lr = lr
        self.shape = shape

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        return make_reply(ReturnCode.OK)


class Forgetful:
    """Does not store its required argument: FedJob cannot record it."""

    def __init__(self, size: int):
        self.dimension = size


class Holder:
    """Stores any value, to test what can be recorded."""

    def __init__(self, value=None):
        self.value = value


class Forwarding(HelloController):
    """Forwards **kwargs to its base: the base's parameters are recorded too."""

    def __init__(self, extra: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.extra = extra


class Named(FLComponent):
    """Has a ``name`` parameter it does not store: FLComponent's own ``_name`` must not be taken for it."""

    def __init__(self, name: str = "default"):
        super().__init__()
