"""PTFileModelPersistor: the server's PyTorch global model, loaded from a checkpoint or a module, saved with torch.save.

Where the files go: the app folder of the server (``fl_ctx.get_workspace().get_app_dir()``), or
``<app folder>/<APP_CKPT_DIR>`` when the app's ``config/environment.json`` names one, as in NVFlare. The global
model is ``FL_global_model.pt``; ``best_FL_global_model.pt`` is written next to it when a model selector fires
``GLOBAL_BEST_MODEL_AVAILABLE``. Each file holds ``{"model": state_dict, "meta_props": meta, "train_conf":
{"train": {"model": <class name>}}}`` and is written atomically (a temporary file, then a rename).

Where that folder is in flarelite: the server's app folder is the folder of the job it runs. ``flarelite poc``,
``flarelite server`` and :class:`flarelite.recipe.PocEnv` run a job folder that stays (PocEnv exports the job
into ``<workspace>/server/<job name>/``, so the model lands in ``<workspace>/server/<job name>/app_server/`` or
``.../app/``, NVFlare's layout). ``FedJob.simulator_run`` (and so ``SimEnv``) runs a temporary export of the job:
the server's app folder is that export, removed when the run ends (see ``flarelite.simulator``).

Loading never unpickles arbitrary objects: every checkpoint is read with ``torch.load(..., weights_only=True)``
(tensors, and plain containers of numbers and strings). NVFlare's ``load_weights_only=False`` (full unpickling)
is refused. The meta saved with the model is reduced to such plain values, so the files this persistor writes
load back the same way.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
from collections import OrderedDict
from enum import Enum
from typing import Any

import numpy as np
import torch

from ...apis.event_type import EventType
from ...apis.fl_context import FLContext
from ...app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from ...app_common.abstract.model_persistor import ModelPersistor
from ...app_common.app_constant import AppConstants, DefaultCheckpointFileName
from ...app_common.app_event_type import AppEventType
from ...app_common.model_desc import ModelDescriptor

ENVIRONMENT_FILE = "environment.json"  # in the app's config/ folder, as NVFlare's run argument ``env`` defaults to
CHECKPOINT_DIR_KEY = "APP_CKPT_DIR"
CHECKPOINT_FILE_KEY = "APP_CKPT"
PT_FORMAT = "PT_CHECKPOINT"


class PTFileModelPersistor(ModelPersistor):
    """Loads the initial PyTorch model (checkpoint or module), saves the global and the best global model."""

    def __init__(
        self,
        exclude_vars: str | None = None,
        model: Any = None,
        global_model_file_name: str = DefaultCheckpointFileName.GLOBAL_MODEL,
        best_global_model_file_name: str = DefaultCheckpointFileName.BEST_GLOBAL_MODEL,
        source_ckpt_file_full_name: str | None = None,
        filter_id: str | None = None,
        load_weights_only: bool = True,
        allow_numpy_conversion: bool = True,
        load_device: str | None = None,
    ) -> None:
        """Persist a PyTorch model as ``{"model": state_dict, ...}`` files in the server's app folder.

        Parameters:
            exclude_vars: a regular expression (``re.search``); matching state-dict keys are kept on the server
                and not handed out (their saved values stay those of the initial model).
            model: an ``nn.Module``; the id of a server component that is one (resolved at START_RUN); or
                ``{"path": "pkg.mod.Class", "args": {...}}``, instantiated here (in the job-building script,
                so that the job records the module itself and each site builds it under its class policy).
            global_model_file_name / best_global_model_file_name: the files written in the save folder.
            source_ckpt_file_full_name: a checkpoint to start from (a relative path is looked up in the app's
                ``custom/`` folder first, then in the server's working folder). A missing file ends the run.
            filter_id: a PersistorFilter component applied around load and save (ModelPersistor).
            load_weights_only: must stay True: checkpoints are read with ``weights_only=True`` only.
            allow_numpy_conversion: hand the weights out as numpy arrays (turned back into tensors on save).
            load_device: the ``map_location`` of loaded checkpoints (None: the CPU).

        Raises:
            ValueError: ``load_weights_only`` is False, a name is not a non-empty str, ``exclude_vars`` is not
                a valid regular expression, or a ``model`` dict has no ``"path"``.
            TypeError: ``model`` is of an unsupported type.
        """
        super().__init__(filter_id=filter_id)
        if load_weights_only is not True:
            raise ValueError(
                "PTFileModelPersistor: load_weights_only=False (full unpickling of checkpoints) is not supported: "
                "flarelite reads checkpoints with torch.load(weights_only=True) only; save checkpoints as state "
                "dicts of tensors (torch.save(model.state_dict(), path)) and leave load_weights_only at True"
            )
        for what, value in (
            ("global_model_file_name", global_model_file_name),
            ("best_global_model_file_name", best_global_model_file_name),
        ):
            if not isinstance(value, str) or not value or os.path.basename(value) != value:
                raise ValueError(f"PTFileModelPersistor: {what} must be a file name (no folders), got {value!r}")
        if source_ckpt_file_full_name is not None and (
            not isinstance(source_ckpt_file_full_name, str) or not source_ckpt_file_full_name
        ):
            raise ValueError(
                f"PTFileModelPersistor: source_ckpt_file_full_name must be a path, got {source_ckpt_file_full_name!r}"
            )
        if exclude_vars is not None and not isinstance(exclude_vars, str):
            raise ValueError(
                f"PTFileModelPersistor: exclude_vars must be a regular expression (str) or None, got "
                f"{type(exclude_vars).__name__}"
            )
        try:
            self._exclude_pattern = re.compile(exclude_vars) if exclude_vars else None
        except re.error as exc:
            raise ValueError(
                f"PTFileModelPersistor: exclude_vars {exclude_vars!r} is not a valid regex: {exc}"
            ) from exc
        if load_device is not None and not isinstance(load_device, str):
            raise ValueError(
                f"PTFileModelPersistor: load_device must be a device name such as 'cpu', got {load_device!r}"
            )
        self.exclude_vars = exclude_vars  # the str, so the job config records what was given
        self.model = _model_from_spec(model)
        self.global_model_file_name = global_model_file_name
        self.best_global_model_file_name = best_global_model_file_name
        self.source_ckpt_file_full_name = source_ckpt_file_full_name
        self.load_weights_only = load_weights_only
        self.allow_numpy_conversion = bool(allow_numpy_conversion)
        self.load_device = load_device
        self.log_dir: str | None = None
        self.ckpt_preload_path: str | None = None
        self._source_path: str | None = None
        self._ckpt_save_path: str | None = None
        self._best_ckpt_save_path: str | None = None
        self._state: OrderedDict[str, Any] | None = None  # the full state dict (tensors), excluded keys included
        self._meta: dict[str, Any] = {}
        self._train_conf: dict[str, Any] | None = None

    # --- events ---------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Resolve the model and the folders at START_RUN; save the best model on GLOBAL_BEST_MODEL_AVAILABLE."""
        if event_type == EventType.START_RUN:
            self._initialize(fl_ctx)
        elif event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            if self._state is None or self._best_ckpt_save_path is None:
                self.log_warning(fl_ctx, "a best global model was announced before any model was loaded; not saved")
                return
            self._write(self._best_ckpt_save_path, fl_ctx)
            self.log_info(fl_ctx, f"saved the best global model to {self._best_ckpt_save_path}")

    def _initialize(self, fl_ctx: FLContext) -> None:
        workspace = fl_ctx.get_workspace()
        try:
            app_dir = workspace.get_app_dir()
        except (AttributeError, RuntimeError) as exc:
            self.system_panic(f"PTFileModelPersistor needs the server's app folder: {exc}", fl_ctx)
            return
        env = self._read_environment(app_dir, fl_ctx)
        if env is None:
            return
        ckpt_dir = env.get(CHECKPOINT_DIR_KEY) or fl_ctx.get_prop(AppConstants.LOG_DIR)
        self.log_dir = os.path.join(app_dir, ckpt_dir) if ckpt_dir else app_dir
        preload = env.get(CHECKPOINT_FILE_KEY) or fl_ctx.get_prop(AppConstants.CKPT_PRELOAD_PATH)
        self.ckpt_preload_path = os.path.join(app_dir, preload) if preload else None
        os.makedirs(self.log_dir, exist_ok=True)
        self._ckpt_save_path = os.path.join(self.log_dir, self.global_model_file_name)
        self._best_ckpt_save_path = os.path.join(self.log_dir, self.best_global_model_file_name)
        if self.source_ckpt_file_full_name:
            self._source_path = self._find_source(self.source_ckpt_file_full_name, app_dir)
        if isinstance(self.model, str):
            component = fl_ctx.get_engine().get_component(self.model)
            if component is None:
                self.system_panic(
                    f"PTFileModelPersistor: there is no component {self.model!r} to use as the model", fl_ctx
                )
                return
            if not isinstance(component, torch.nn.Module):
                self.system_panic(
                    f"PTFileModelPersistor: component {self.model!r} is a {type(component).__name__}, "
                    "not a torch.nn.Module",
                    fl_ctx,
                )
                return
            self.model = component

    def _read_environment(self, app_dir: str, fl_ctx: FLContext) -> dict[str, Any] | None:
        path = os.path.join(app_dir, "config", ENVIRONMENT_FILE)
        if not os.path.isfile(path):
            return {}
        try:
            with open(path, encoding="utf-8") as f:
                env = json.load(f)
        except (OSError, ValueError) as exc:
            self.system_panic(f"PTFileModelPersistor: cannot read {path}: {exc}", fl_ctx)
            return None
        if not isinstance(env, dict):
            self.system_panic(f"PTFileModelPersistor: {path} must hold a JSON object", fl_ctx)
            return None
        return env

    @staticmethod
    def _find_source(name: str, app_dir: str) -> str:
        if os.path.isabs(name):
            return name
        in_custom = os.path.join(app_dir, "custom", name)
        return in_custom if os.path.exists(in_custom) else os.path.abspath(name)

    # --- loading --------------------------------------------------------------------------------------
    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        """Return the initial model: the source checkpoint, else APP_CKPT, else the model's ``state_dict()``."""
        source = self._source_path or self.ckpt_preload_path
        if source:
            if not os.path.isfile(source):
                self.system_panic(f"PTFileModelPersistor: the checkpoint {source} does not exist", fl_ctx)
                return make_model_learnable({}, {})
            try:
                data = self._torch_load(source)
            except Exception as exc:
                self.log_exception(fl_ctx, f"cannot load the checkpoint {source}")
                self.system_panic(f"PTFileModelPersistor: cannot load the checkpoint {source}: {exc}", fl_ctx)
                return make_model_learnable({}, {})
            self.log_info(fl_ctx, f"loaded the initial model from {source}")
        elif isinstance(self.model, torch.nn.Module):
            try:
                data = self.model.state_dict()
            except Exception as exc:
                self.system_panic(f"PTFileModelPersistor: cannot get the state_dict of the model: {exc}", fl_ctx)
                return make_model_learnable({}, {})
        else:
            self.system_panic(
                "PTFileModelPersistor has nothing to load: give it a model (nn.Module or component id) or a "
                "source checkpoint (source_ckpt_file_full_name)",
                fl_ctx,
            )
            return make_model_learnable({}, {})
        if isinstance(self.model, torch.nn.Module):
            self._train_conf = {"train": {"model": type(self.model).__name__}}
        try:
            self._set_state(data)
        except ValueError as exc:
            self.system_panic(f"PTFileModelPersistor: {exc}", fl_ctx)
            return make_model_learnable({}, {})
        return self._to_learnable()

    def _torch_load(self, path: str) -> Any:
        return torch.load(path, map_location=self.load_device or "cpu", weights_only=True)

    def _set_state(self, data: Any) -> None:
        """Take a checkpoint: ``{"model": state_dict, "meta_props": ..., "train_conf": ...}`` or a bare state dict."""
        if not isinstance(data, dict):
            raise ValueError(f"a checkpoint must hold a dict (a state dict), got {type(data).__name__}")
        if isinstance(data.get("model"), dict):
            state = data["model"]
            meta = data.get("meta_props")
            self._meta = dict(meta) if isinstance(meta, dict) else {}
            if isinstance(data.get("train_conf"), dict):
                self._train_conf = data["train_conf"]
        else:
            state = data
            self._meta = {}
        self._state = OrderedDict((str(k), v) for k, v in state.items())

    def _excluded(self, key: str) -> bool:
        return self._exclude_pattern is not None and self._exclude_pattern.search(key) is not None

    def _to_learnable(self, state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> ModelLearnable:
        state = self._state if state is None else state
        weights: dict[str, Any] = {}
        for key, value in (state or {}).items():
            if self._excluded(key):
                continue
            if self.allow_numpy_conversion and isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            weights[key] = value
        return make_model_learnable(weights, dict(self._meta if meta is None else meta))

    # --- saving ---------------------------------------------------------------------------------------
    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        """Take the weights (numpy arrays become tensors again) and the meta; write the global model file."""
        if self._ckpt_save_path is None:
            self.system_panic("PTFileModelPersistor.save_model was called before START_RUN", fl_ctx)
            return
        weights = model.get(ModelLearnableKey.WEIGHTS) or {}
        if not isinstance(weights, dict):
            self.system_panic(
                f"PTFileModelPersistor: model weights must be a dict, got {type(weights).__name__}", fl_ctx
            )
            return
        state = self._state if self._state is not None else OrderedDict()
        for key, value in weights.items():
            try:
                state[key] = _to_tensor(value, state.get(key))
            except (TypeError, ValueError, RuntimeError) as exc:
                self.system_panic(f"PTFileModelPersistor: cannot store weight {key!r}: {exc}", fl_ctx)
                return
        self._state = state
        meta = model.get(ModelLearnableKey.META)
        self._meta = dict(meta) if isinstance(meta, dict) else {}
        self._write(self._ckpt_save_path, fl_ctx)

    def _persistence_dict(self) -> dict[str, Any]:
        return {
            "model": OrderedDict(self._state or {}),
            "meta_props": _plain(self._meta),
            "train_conf": _plain(self._train_conf or {"train": {}}),
        }

    def _write(self, path: str, fl_ctx: FLContext) -> None:
        folder = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self._persistence_dict(), f)
            os.replace(tmp, path)
        except Exception as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            self.log_exception(fl_ctx, f"cannot write {path}")
            self.system_panic(f"PTFileModelPersistor: cannot write {path}: {exc}", fl_ctx)

    # --- cross-site evaluation ------------------------------------------------------------------------
    def get_model_inventory(self, fl_ctx: FLContext) -> dict[str, ModelDescriptor]:
        """Return the models on disk: the source checkpoint, the global model and the best global model."""
        inventory: dict[str, ModelDescriptor] = {}
        candidates = []
        if self._source_path:
            candidates.append((os.path.basename(self._source_path), self._source_path))
        if self.log_dir:
            candidates.append((self.global_model_file_name, os.path.join(self.log_dir, self.global_model_file_name)))
            candidates.append(
                (self.best_global_model_file_name, os.path.join(self.log_dir, self.best_global_model_file_name))
            )
        for name, location in candidates:
            if os.path.isfile(location):
                inventory[name] = ModelDescriptor(name=name, location=location, model_format=PT_FORMAT, props={})
        return inventory

    def get_model(self, model_file: str, fl_ctx: FLContext) -> ModelLearnable | None:
        """Return the model saved as ``model_file`` (an inventory name), or None (logged) when it cannot be read."""
        inventory = self.get_model_inventory(fl_ctx)
        desc = inventory.get(model_file)
        if desc is None:
            self.log_error(fl_ctx, f"no model {model_file!r} on the server; there are {sorted(inventory)}")
            return None
        try:
            data = torch.load(desc.location, map_location="cpu", weights_only=True)
        except Exception:
            self.log_exception(fl_ctx, f"cannot load the model {model_file!r} from {desc.location}")
            return None
        if not isinstance(data, dict):
            self.log_error(fl_ctx, f"{desc.location} does not hold a state dict")
            return None
        if isinstance(data.get("model"), dict):
            meta = data.get("meta_props")
            return self._to_learnable(data["model"], meta if isinstance(meta, dict) else {})
        return self._to_learnable(data, {})


def _model_from_spec(model: Any) -> Any:
    """Return ``model`` itself (None, a module, a component id), or the module a ``{"path", "args"}`` dict names."""
    if model is None or isinstance(model, (str, torch.nn.Module)):
        return model
    if isinstance(model, dict):
        path = model.get("path")
        if not isinstance(path, str) or "." not in path:
            raise ValueError(
                f"PTFileModelPersistor: a model dict must name its class as 'path' ('pkg.module.Class'), got {model!r}"
            )
        args = model.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"PTFileModelPersistor: the model's 'args' must be a dict, got {args!r}")
        module_name, _, class_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"PTFileModelPersistor: cannot import the model class {path!r}: {exc}") from exc
        built = cls(**args)
        if not isinstance(built, torch.nn.Module):
            raise TypeError(f"PTFileModelPersistor: {path} built a {type(built).__name__}, not a torch.nn.Module")
        return built
    raise TypeError(
        f"PTFileModelPersistor: model must be a torch.nn.Module, a component id or a {{'path', 'args'}} dict, "
        f"got {type(model).__name__}"
    )


def _to_tensor(value: Any, like: Any) -> Any:
    """``value`` as a tensor shaped and typed like the stored one (``like``), when there is one."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray) or np.isscalar(value) or isinstance(value, (list, tuple)):
        tensor = torch.as_tensor(np.asarray(value))
    else:
        raise TypeError(f"expected a tensor or a numpy array, got {type(value).__name__}")
    if isinstance(like, torch.Tensor):
        if tensor.shape != like.shape and tensor.numel() == like.numel():
            tensor = tensor.reshape(like.shape)
        tensor = tensor.to(dtype=like.dtype, device=like.device)
    return tensor


def _plain(value: Any) -> Any:
    """``value`` as plain Python (what ``torch.load(weights_only=True)`` reads back): numbers, str, lists, dicts."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _plain(value.tolist())
    if isinstance(value, bool):
        return bool(value)
    for kind in (int, float, str):  # subclasses of the plain types (their class would be pickled)
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
