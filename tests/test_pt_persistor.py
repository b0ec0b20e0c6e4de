"""PTFileModelPersistor and PTFileModelLocator on their own: load order, numpy conversion, saving, best model."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flarelite.apis.event_type import EventType  # noqa: E402
from flarelite.apis.fl_constant import ReservedKey  # noqa: E402
from flarelite.apis.fl_context import FLContextManager  # noqa: E402
from flarelite.apis.workspace import Workspace  # noqa: E402
from flarelite.app_common.abstract.model import make_model_learnable  # noqa: E402
from flarelite.app_common.app_event_type import AppEventType  # noqa: E402
from flarelite.app_opt.pt import PTFileModelLocator, PTFileModelPersistor  # noqa: E402
from flarelite.app_opt.pt.job_config.model import PTModel  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "recipe_fixtures"))

from tiny_net import TinyNet  # noqa: E402


class _Engine:
    """What the persistor and locator ask of the engine: components; a panic aborts the run."""

    def __init__(self, components: dict) -> None:
        self.components = components
        self.aborted: list[str] = []

    def get_component(self, component_id: str):
        return self.components.get(component_id)

    def fire_event(self, event_type, fl_ctx) -> None:
        pass

    def abort_run(self, reason: str, fl_ctx=None) -> None:
        self.aborted.append(reason)


def started(tmp_path, persistor, **components):
    app_dir = tmp_path / "app_server"
    (app_dir / "custom").mkdir(parents=True, exist_ok=True)
    (app_dir / "config").mkdir(exist_ok=True)
    engine = _Engine({"persistor": persistor, **components})
    workspace = Workspace(str(tmp_path), "server", str(tmp_path / "server"), str(app_dir))
    manager = FLContextManager(
        engine=engine, identity_name="server", private_stickers={ReservedKey.WORKSPACE_OBJECT: workspace}
    )
    fl_ctx = manager.new_context()
    persistor.handle_event(EventType.START_RUN, fl_ctx)
    return fl_ctx, engine, app_dir


def test_loads_the_module_as_numpy_and_saves_tensors_back(tmp_path):
    net = TinyNet()
    persistor = PTFileModelPersistor(model=net)
    fl_ctx, engine, app_dir = started(tmp_path, persistor)
    learnable = persistor.load(fl_ctx)
    assert set(learnable["weights"]) == {"fc.weight", "fc.bias"}
    assert all(isinstance(v, np.ndarray) for v in learnable["weights"].values())
    updated = {k: v + 1 for k, v in learnable["weights"].items()}
    persistor.save(make_model_learnable(updated, {"current_round": np.int64(3), "note": "x"}), fl_ctx)
    saved = torch.load(app_dir / "FL_global_model.pt", weights_only=True)
    assert saved["meta_props"] == {"current_round": 3, "note": "x"}
    assert saved["train_conf"] == {"train": {"model": "TinyNet"}}
    torch.testing.assert_close(saved["model"]["fc.weight"], net.state_dict()["fc.weight"] + 1)
    assert saved["model"]["fc.bias"].dtype == torch.float32
    assert not [f for f in os.listdir(app_dir) if f.endswith(".tmp")]  # the write was atomic
    assert engine.aborted == []


def test_source_checkpoint_wins_and_exclude_vars_keeps_keys_on_the_server(tmp_path):
    net = TinyNet()
    ckpt = {k: torch.full_like(v, 7.0) for k, v in net.state_dict().items()}
    (tmp_path / "app_server" / "custom").mkdir(parents=True)
    torch.save(ckpt, tmp_path / "app_server" / "custom" / "start.pt")
    persistor = PTFileModelPersistor(model=net, source_ckpt_file_full_name="start.pt", exclude_vars="bias")
    fl_ctx, _, app_dir = started(tmp_path, persistor)
    learnable = persistor.load(fl_ctx)
    assert list(learnable["weights"]) == ["fc.weight"]
    np.testing.assert_allclose(learnable["weights"]["fc.weight"], 7.0)
    persistor.save(make_model_learnable({"fc.weight": learnable["weights"]["fc.weight"] * 0}, {}), fl_ctx)
    saved = torch.load(app_dir / "FL_global_model.pt", weights_only=True)
    torch.testing.assert_close(saved["model"]["fc.bias"], torch.full((2,), 7.0))  # excluded: kept
    assert set(persistor.get_model_inventory(fl_ctx)) == {"start.pt", "FL_global_model.pt"}


def test_environment_json_sets_the_checkpoint_folder_and_preload(tmp_path):
    net = TinyNet()
    app_dir = tmp_path / "app_server"
    (app_dir / "config").mkdir(parents=True)
    (app_dir / "ckpt").mkdir()
    torch.save({"model": {k: torch.zeros_like(v) for k, v in net.state_dict().items()}}, app_dir / "ckpt" / "pre.pt")
    (app_dir / "config" / "environment.json").write_text(
        json.dumps({"APP_CKPT_DIR": "ckpt", "APP_CKPT": "ckpt/pre.pt"})
    )
    persistor = PTFileModelPersistor(model=net)
    fl_ctx, _, _ = started(tmp_path, persistor)
    learnable = persistor.load(fl_ctx)
    assert all(np.all(v == 0) for v in learnable["weights"].values())
    persistor.save(learnable, fl_ctx)
    assert os.path.isfile(app_dir / "ckpt" / "FL_global_model.pt")


def test_best_model_and_the_locator(tmp_path):
    persistor = PTFileModelPersistor(model=TinyNet())
    locator = PTFileModelLocator(pt_persistor_id="persistor")
    fl_ctx, _, app_dir = started(tmp_path, persistor, locator=locator)
    learnable = persistor.load(fl_ctx)
    persistor.save(learnable, fl_ctx)
    persistor.handle_event(AppEventType.GLOBAL_BEST_MODEL_AVAILABLE, fl_ctx)
    assert os.path.isfile(app_dir / "best_FL_global_model.pt")
    assert sorted(locator.get_model_names(fl_ctx)) == ["FL_global_model.pt", "best_FL_global_model.pt"]
    dxo = locator.locate_model("best_FL_global_model.pt", fl_ctx)
    assert dxo.data_kind == "WEIGHTS" and set(dxo.data) == {"fc.weight", "fc.bias"}
    assert locator.locate_model("nope.pt", fl_ctx) is None


def test_a_model_component_id_and_a_class_dict(tmp_path):
    net = TinyNet()
    persistor = PTFileModelPersistor(model="net")
    fl_ctx, engine, _ = started(tmp_path, persistor, net=net)
    assert persistor.model is net
    built = PTFileModelPersistor(model={"path": "tiny_net.TinyNet", "args": {"hidden": 5}})
    assert isinstance(built.model, TinyNet) and built.model.hidden == 5
    with pytest.raises(ValueError, match="'path'"):
        PTFileModelPersistor(model={"args": {}})


def test_a_checkpoint_that_needs_full_unpickling_ends_the_run(tmp_path):
    (tmp_path / "app_server" / "custom").mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(1)}, "extra": TinyNet()}, tmp_path / "app_server" / "custom" / "bad.pt")
    persistor = PTFileModelPersistor(model=TinyNet(), source_ckpt_file_full_name="bad.pt")
    fl_ctx, engine, _ = started(tmp_path, persistor)
    persistor.load(fl_ctx)
    assert engine.aborted and "bad.pt" in engine.aborted[0]


def test_full_unpickling_is_refused_and_ptmodel_checks_its_model():
    with pytest.raises(ValueError, match="weights_only"):
        PTFileModelPersistor(model=TinyNet(), load_weights_only=False)
    with pytest.raises(ValueError, match="'path'"):
        PTModel({"args": {}})
    with pytest.raises(TypeError, match="torch.nn.Module"):
        PTModel([1, 2, 3])


def test_fedavg_checks_tensor_results_against_the_global_model():
    from flarelite.apis.fl_context import FLContext
    from flarelite.app_common.abstract.fl_model import FLModel
    from flarelite.app_common.workflows.fedavg import FedAvg

    state = TinyNet().state_dict()  # what FedAvg sends with server_expected_format=PYTORCH
    fedavg = FedAvg()
    fedavg.fl_ctx = FLContext()
    fedavg.current_round = 0
    fedavg._reset_round(expected=3, global_params=dict(state))

    def result(site, **changes):
        params = {k: v.clone() + 1 for k, v in state.items()} | changes
        return FLModel(params=params, meta={"client_name": site})

    assert not fedavg._aggregate_one_result(result("site-1", **{"fc.weight": torch.ones(3, 2)}))  # transposed
    assert not fedavg._aggregate_one_result(result("site-2", **{"fc.bias": torch.tensor([float("nan"), 0.0])}))
    assert fedavg._aggregate_one_result(result("site-3", **{"fc.bias": torch.ones(2, dtype=torch.bfloat16)}))
    aggr = fedavg._get_aggregated_result()
    assert aggr.meta["nr_aggregated"] == 1
    torch.testing.assert_close(aggr.params["fc.weight"], state["fc.weight"] + 1)
