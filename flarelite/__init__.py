"""flarelite: a small federated-learning runtime with NVFlare's API.

The everyday names are re-exported here; module paths (``flarelite.apis.shareable`` ...) mirror NVFlare's.
Importing flarelite never imports torch (nor the job-building code, until ``flarelite.FedJob`` or
``flarelite.FilterType`` is used).
"""

from .apis.controller_spec import ClientTask, SendOrder, Task, TaskCompletionStatus
from .apis.dxo import DXO, DataKind, MetaKey, from_shareable
from .apis.event_type import EventType
from .apis.executor import Executor
from .apis.fl_component import FLComponent
from .apis.fl_constant import FLContextKey, ReservedKey, ReturnCode, SiteType
from .apis.fl_context import FLContext
from .apis.impl.controller import Controller
from .apis.shareable import Shareable, make_copy, make_reply
from .apis.signal import Signal
from .errors import FlareliteError, RunFailedError

__version__ = "0.1.0"

__all__ = [
    "DXO",
    "ClientTask",
    "Controller",
    "DataKind",
    "EventType",
    "Executor",
    "FLComponent",
    "FLContext",
    "FLContextKey",
    "FedJob",
    "FilterType",
    "FlareliteError",
    "MetaKey",
    "ReservedKey",
    "ReturnCode",
    "RunFailedError",
    "SendOrder",
    "Shareable",
    "Signal",
    "SiteType",
    "Task",
    "TaskCompletionStatus",
    "from_shareable",
    "make_copy",
    "make_reply",
]


def __getattr__(name: str) -> object:
    # FedJob pulls in the job-building code, which site processes never need: load it on first use
    if name == "FedJob":
        from .job_config.api import FedJob

        return FedJob
    if name == "FilterType":
        from .job_config.defs import FilterType

        return FilterType
    raise AttributeError(f"module 'flarelite' has no attribute {name!r}")
