"""Widget: the base of components that are neither workflows nor executors and only react to events.

NVFlare keeps this class at ``nvflare.widgets.widget``; flarelite keeps it here, next to the widgets built on it.
"""

from __future__ import annotations

from flarelite.apis.fl_component import FLComponent


class Widget(FLComponent):
    """A component that adds behaviour to a site by handling its events (senders, receivers, converters)."""

    def __init__(self) -> None:
        super().__init__()
