"""``flarelite server`` without a job folder, and ``flarelite client`` against such a server: the processes."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from ..errors import ConnectError
from .control import ControlClient, NotAFederation

_log = logging.getLogger("flarelite.federation")


def _stopper(stop: Any) -> Any:
    from ..stopping import SiteStopper

    def on_stop(reason: str) -> bool:
        _log.warning("%s: stopping", reason)
        stop()
        return False

    return SiteStopper(on_stop, lambda reason: None).install()


def _log_config(args: argparse.Namespace) -> str | None:
    """``-l`` for the job processes: a file as an absolute path (they run in their own folders)."""
    value = getattr(args, "log_config", None)
    return os.path.abspath(value) if value and os.path.isfile(value) else value


def serve(args: argparse.Namespace) -> int:
    """Run a long-lived server (see ``federation/server.py``) until SIGTERM/SIGINT."""
    from ..launch import tls_config
    from ..runtime.logs import open_site_log, setup_logging
    from .server import FederationServer

    workspace = os.path.abspath(args.workspace)
    os.makedirs(workspace, exist_ok=True)
    setup_logging()
    open_site_log("server", workspace)
    server = FederationServer(
        args.listen,
        workspace,
        tls=tls_config(args.mode, args.certs, "server"),
        certs=os.path.abspath(args.certs) if args.certs else None,
        max_jobs=args.max_jobs,
        allowed_classes=args.allowed_classes,
        data_plane=args.data_plane,
        max_message_size=args.max_message_size,
        job_ready_timeout=min(args.ready_timeout, 120.0),
        log_config=_log_config(args),
    )
    stopper = _stopper(server.stop)
    server.start()
    server.wait()
    return stopper.exit_code


def is_federation(address: str, tls: Any, name: str, connect_timeout: float) -> bool:
    """Whether the server at ``address`` is a long-lived one (it answers the control calls), waiting for it to
    answer at all for up to ``connect_timeout`` seconds (saying every few seconds what it waits for).

    Raises:
        ConnectError: nothing answers at ``address`` within ``connect_timeout``.
    """
    client = ControlClient(address, tls, name)
    try:
        client.wait_until_up(connect_timeout, say=lambda line: _log.warning("%s: %s", name, line))
        return True
    except NotAFederation:
        return False
    finally:
        client.close()


def agent(args: argparse.Namespace, tls: Any) -> int:
    """Run a site of a long-lived server (see ``federation/site.py``) until SIGTERM/SIGINT."""
    from ..runtime.logs import open_site_log, setup_logging
    from .site import SiteAgent

    workspace = os.path.abspath(args.workspace)
    site = SiteAgent(
        args.name,
        args.server,
        workspace,
        tls=tls,
        certs=os.path.abspath(args.certs) if args.certs else None,
        allow_custom_code=args.allow_custom_code or args.mode in ("tls", "mtls"),
        allowed_classes=args.allowed_classes,
        data_plane=args.data_plane,
        max_message_size=args.max_message_size,
        connect_timeout=0.0,
        log_config=_log_config(args),
    )
    os.makedirs(site.folder, exist_ok=True)
    setup_logging()
    open_site_log(args.name, site.folder)
    stopper = _stopper(site.stop)
    try:
        code = site.run()
    except ConnectError as exc:
        _log.error("%s: %s", args.name, exc)
        return 1
    return stopper.exit_code or code
