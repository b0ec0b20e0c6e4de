"""Admin access to a long-lived flarelite server: ``Session`` (Python) and the ``flarelite job ...`` and
``flarelite admin`` commands (``commands.py``), on the server's control calls (``flarelite/federation``)."""

from .session import MonitorReturnCode, Session, new_session

__all__ = ["MonitorReturnCode", "Session", "new_session"]
