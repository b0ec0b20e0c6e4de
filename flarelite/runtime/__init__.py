"""What runs a site: the server and client engines, task scheduling, aux dispatch, events and logs."""

from .client import ClientRuntime
from .server import ServerRuntime

__all__ = ["ClientRuntime", "ServerRuntime"]
