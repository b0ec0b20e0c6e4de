"""The deprecated ``@flare.train`` / ``@flare.evaluate`` decorators: receive, call the function, send."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

from flarelite.app_common.abstract.fl_model import FLModel

from . import api

_pending_metrics: dict[int, Any] = {}  # id(APIContext) -> metrics an @evaluate call returned on a train task


def train(_func: Callable | None = None, **kwargs: Any) -> Callable:
    """Wrap a training function: it gets the received FLModel first and must return an FLModel, which is sent.

    Metrics an ``@evaluate`` function returned earlier on the same train task are attached to it.

    Raises (when called):
        RuntimeError: the function returned None or not an FLModel.
    """

    def decorator(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            warnings.warn("@flare.train is deprecated; call flare.receive() and flare.send()", DeprecationWarning, 2)
            ctx = api.get_context()
            model = api.receive(ctx=ctx)
            result = func(model, *args, **kw)
            if result is None:
                raise RuntimeError(f"the @flare.train function {func.__name__} returned None; return an FLModel")
            if not isinstance(result, FLModel):
                raise RuntimeError(
                    f"the @flare.train function {func.__name__} returned {type(result).__name__}; return an FLModel"
                )
            metrics = _pending_metrics.pop(id(ctx), None)
            if metrics is not None and result.metrics is None:
                result.metrics = metrics
            api.send(result, ctx=ctx)
            return result

        return wrapper

    return decorator(_func) if _func is not None else decorator


def evaluate(_func: Callable | None = None, **kwargs: Any) -> Callable:
    """Wrap an evaluation function: it gets the received FLModel first and must return its metrics.

    On a train task the metrics are kept for the next ``@train`` call; otherwise ``FLModel(metrics=...)`` is sent.

    Raises (when called):
        RuntimeError: the function returned None.
    """

    def decorator(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            warnings.warn("@flare.evaluate is deprecated; call flare.receive() and flare.send()", DeprecationWarning, 2)
            ctx = api.get_context()
            model = api.receive(ctx=ctx)
            result = func(model, *args, **kw)
            if result is None:
                raise RuntimeError(f"the @flare.evaluate function {func.__name__} returned None; return its metrics")
            if api.is_train(ctx=ctx):
                _pending_metrics[id(ctx)] = result
            else:
                api.send(FLModel(metrics=result), ctx=ctx)
            return result

        return wrapper

    return decorator(_func) if _func is not None else decorator
