"""The Client API: ``import flarelite.client as flare`` in a training script (see ``flarelite.client.api``).

``clear`` lives in ``flarelite.client.api`` only (as in NVFlare). NVFlare's ``IPCAgent`` (a third-party-system
agent) is not part of flarelite.
"""

from flarelite.apis.analytix import AnalyticsDataType
from flarelite.app_common.abstract.fl_model import FLModel, ParamsType

from .api import (
    get_config,
    get_job_id,
    get_site_name,
    get_task_name,
    init,
    is_evaluate,
    is_running,
    is_submit_model,
    is_train,
    log,
    receive,
    send,
    shutdown,
    system_info,
)
from .decorator import evaluate, train

__all__ = [
    "FLModel",
    "ParamsType",
    "AnalyticsDataType",
    "init",
    "receive",
    "send",
    "is_running",
    "is_train",
    "is_evaluate",
    "is_submit_model",
    "get_task_name",
    "get_job_id",
    "get_site_name",
    "get_config",
    "system_info",
    "log",
    "shutdown",
    "train",
    "evaluate",
]
