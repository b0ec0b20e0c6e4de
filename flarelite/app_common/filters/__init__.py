"""Stock filters (NVFlare's ``app_common/filters``); ``DXOBlocker`` and ``ConvertWeights`` are in their modules."""

from .exclude_vars import ExcludeVars
from .percentile_privacy import PercentilePrivacy
from .svt_privacy import SVTPrivacy

__all__ = ["ExcludeVars", "PercentilePrivacy", "SVTPrivacy"]
