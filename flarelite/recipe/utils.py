"""Recipe helpers: experiment tracking, cross-site and final global evaluation, per-site config, job meta."""

from __future__ import annotations

import copy
import importlib
from typing import Any

from ..apis.analytix import ANALYTIC_EVENT_TYPE
from ..apis.fl_component import FED_EVENT_PREFIX
from ..app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from ..errors import ConfigError
from ..job_config.api import _RESERVED_META_KEYS
from ..job_config.exporter import to_config_value
from ..job_config.script_runner import FrameworkType
from .spec import Recipe

TRACKING_REGISTRY: dict[str, dict[str, str]] = {
    "tensorboard": {
        "package": "tensorboard",
        "receiver_module": "flarelite.app_opt.tracking.tb.tb_receiver",
        "receiver_class": "TBAnalyticsReceiver",
    },
    "mlflow": {
        "package": "mlflow",
        "receiver_module": "flarelite.app_opt.tracking.mlflow.mlflow_receiver",
        "receiver_class": "MLflowReceiver",
    },
    "wandb": {
        "package": "wandb",
        "receiver_module": "flarelite.app_opt.tracking.wandb.wandb_receiver",
        "receiver_class": "WandBReceiver",
    },
}


def _check_recipe(recipe: Any, what: str) -> None:
    if not isinstance(recipe, Recipe):
        raise TypeError(f"{what}: expected a Recipe, got {type(recipe).__name__}")


def add_experiment_tracking(
    recipe: Recipe,
    tracking_type: str,
    tracking_config: dict | None = None,
    client_side: bool = False,
    server_side: bool = True,
    clients: list[str] | None = None,
) -> None:
    """Record the clients' metrics with ``"tensorboard"``, ``"mlflow"`` or ``"wandb"``.

    Server side (default): the receiver (``tracking_config`` are its arguments) gets id ``"receiver"`` and writes
    every site's metrics (TensorBoard: ``<server run dir>/tb_events/<site>/``). Client side: the same receiver
    class listening to the ``analytix_log_stats`` events (local and federated), id ``"client_receiver"``, on
    ``clients`` (None: all). A second call (another tracking type) adds its receivers as ``receiver_1`` ...
    MLflow's ``kw_args`` default to ``experiment_name="<recipe name>-experiment"`` and run names
    ``"<recipe name>-Server"`` / ``"<recipe name>-Client"``.

    Raises:
        ValueError: an unknown ``tracking_type``; its package does not import (``"<pkg> is not installed ..."``);
            flarelite has no receiver for it (wandb).
    """
    _check_recipe(recipe, "add_experiment_tracking")
    entry = TRACKING_REGISTRY.get(tracking_type) if isinstance(tracking_type, str) else None
    if entry is None:
        raise ValueError(f"invalid tracking_type {tracking_type!r}: use one of {sorted(TRACKING_REGISTRY)}")
    if tracking_config is not None and not isinstance(tracking_config, dict):
        raise ValueError(f"tracking_config must be a dict of receiver arguments, got {type(tracking_config).__name__}")
    package = entry["package"]
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise ValueError(
            f"{package} is not installed: install it (`pip install {package}`) to use {tracking_type} tracking ({exc})"
        ) from exc
    try:
        receiver_class = getattr(importlib.import_module(entry["receiver_module"]), entry["receiver_class"])
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"flarelite has no {entry['receiver_class']} for {tracking_type} tracking ({exc})") from exc
    if not (server_side or client_side):
        raise ValueError("add_experiment_tracking: server_side and client_side are both False: nothing to add")

    def config(side: str) -> dict[str, Any]:
        args = copy.deepcopy(tracking_config or {})
        if tracking_type == "mlflow":
            kw_args = args.setdefault("kw_args", {})
            kw_args.setdefault("experiment_name", f"{recipe.name}-experiment")
            kw_args.setdefault("run_name", f"{recipe.name}-{side}")
        return args

    used = getattr(recipe, "_tracking_receivers", 0)  # a second tracker gets ids with a suffix, as in NVFlare
    suffix = f"_{used}" if used else ""
    recipe._tracking_receivers = used + 1
    if server_side:
        recipe._job.to_server(receiver_class(**config("Server")), id=f"receiver{suffix}")
    if client_side:
        # the local event (an in-process script's records) and the federated one (an external script's, which its
        # executor fires as fed.analytix_log_stats directly); a record is saved once either way
        events = [ANALYTIC_EVENT_TYPE, FED_EVENT_PREFIX + ANALYTIC_EVENT_TYPE]
        receiver = receiver_class(**config("Client"), events=events)
        recipe._client_op("object", receiver, clients, id=f"client_receiver{suffix}")


def _locator_id(recipe: Recipe, what: str) -> str:
    """The id of the server's model locator for ``recipe.framework``, added when the job has none."""
    job = recipe._job
    framework = getattr(recipe, "framework", None)
    comp_ids = getattr(job, "comp_ids", {})
    if framework == FrameworkType.PYTORCH:
        if comp_ids.get("locator_id"):
            return comp_ids["locator_id"]
        from ..app_opt.pt.file_model_locator import PTFileModelLocator

        locator_id = job.to_server(
            PTFileModelLocator(pt_persistor_id=comp_ids.get("persistor_id", "persistor")), id="model_locator"
        )
        comp_ids["locator_id"] = locator_id
        return locator_id
    if framework in (FrameworkType.NUMPY, FrameworkType.RAW):
        from ..app_common.np.np_model_locator import NPModelLocator

        return job.to_server(NPModelLocator(), id="model_locator")
    raise ValueError(f"{what}: no model locator for framework {framework!r} in flarelite (PyTorch and NumPy have one)")


def add_cross_site_evaluation(
    recipe: Recipe,
    submit_model_timeout: int = 600,
    validation_timeout: int = 6000,
    participating_clients: list[str] | None = None,
) -> None:
    """After training, every client validates every client's model and the server's models (CrossSiteModelEval).

    The locator follows ``recipe.framework`` (PYTORCH: PTFileModelLocator; NUMPY/RAW: NPModelLocator, and the
    clients get an NPValidator for ``"validate"``). The client scripts must answer ``flare.is_submit_model()``
    (and, for PyTorch, ``flare.is_evaluate()``) tasks. Results: ``<server run dir>/cross_site_val/``.

    Raises:
        RuntimeError: cross-site evaluation was already added to this recipe.
        ValueError: the recipe's framework has no model locator in flarelite.
    """
    _check_recipe(recipe, "add_cross_site_evaluation")
    _add_cross_site_eval(
        recipe,
        "add_cross_site_evaluation",
        submit_model_timeout=submit_model_timeout,
        validation_timeout=validation_timeout,
        participating_clients=participating_clients,
    )
    if getattr(recipe, "framework", None) in (FrameworkType.NUMPY, FrameworkType.RAW):
        from ..app_common.np.np_validator import NPValidator

        recipe._client_op("object", NPValidator(), None, tasks=["validate"])


def add_final_global_evaluation(
    recipe: Recipe, participating_clients: list[str] | None = None, validation_timeout: int = 6000
) -> None:
    """After training, every client validates the server's global models (PyTorch recipes only).

    Raises:
        ValueError: the recipe is not a PyTorch one.
        RuntimeError: cross-site evaluation was already added to this recipe.
    """
    _check_recipe(recipe, "add_final_global_evaluation")
    if getattr(recipe, "framework", None) != FrameworkType.PYTORCH:
        raise ValueError(
            f"add_final_global_evaluation is for PyTorch recipes; recipe {recipe.name!r} has framework "
            f"{getattr(recipe, 'framework', None)!r}"
        )
    _add_cross_site_eval(
        recipe,
        "add_final_global_evaluation",
        submit_model_task_name="",
        validation_timeout=validation_timeout,
        participating_clients=participating_clients,
    )


def _add_cross_site_eval(recipe: Recipe, what: str, **kwargs: Any) -> None:
    """Add CrossSiteModelEval (``kwargs``) with the framework's locator and a ValidationJsonGenerator, once."""
    from ..app_common.widgets.validation_json_generator import ValidationJsonGenerator

    if getattr(recipe, "_cross_site_eval_added", False):
        raise RuntimeError(f"cross-site evaluation was already added to recipe {recipe.name!r}")
    locator_id = _locator_id(recipe, what)
    if "json_generator" not in recipe._job._taken_ids("server"):
        recipe._job.to_server(ValidationJsonGenerator(), id="json_generator")
    recipe._job.to_server(CrossSiteModelEval(model_locator_id=locator_id, **kwargs))
    recipe._cross_site_eval_added = True  # type: ignore[attr-defined]


def set_per_site_config(recipe: Recipe, config: dict[str, dict[str, Any]]) -> None:
    """Give each named site its own client app, with values that replace the recipe's for that site.

    ``config`` is ``{site: {key: value}}`` with the keys ``train_script``, ``train_args``,
    ``launch_external_process``, ``command``, ``framework``, ``server_expected_format``, ``params_transfer_type``,
    ``launch_once``, ``launch_timeout``, ``shutdown_timeout`` (a missing or None value keeps the recipe's). The job
    then runs on exactly these sites.

    Raises:
        ValueError: an unknown key, or not a ``{site: dict}`` mapping.
        RuntimeError: the recipe was already exported or run.
    """
    _check_recipe(recipe, "set_per_site_config")
    recipe._set_per_site_config(config)


def set_recipe_meta(recipe: Recipe, key: str, value: Any) -> None:
    """Set ``key`` in the job's ``meta.json``.

    Raises:
        ValueError: ``key`` is not a str, is one of the job's own keys, or ``value`` cannot be written as JSON.
    """
    _check_recipe(recipe, "set_recipe_meta")
    if not isinstance(key, str) or not key:
        raise ValueError(f"set_recipe_meta: key must be a non-empty str, got {key!r}")
    if key in _RESERVED_META_KEYS:
        raise ValueError(f"set_recipe_meta: {key!r} is set by the job itself (name, min_clients, ...)")
    try:
        to_config_value(value, f"meta {key!r}")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    recipe._job.meta_props[key] = copy.deepcopy(value)
