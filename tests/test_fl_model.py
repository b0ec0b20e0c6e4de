"""FLModel's rules, FLModelUtils' encodings (NVFlare's kinds, headers, meta keys), and FLModels through the codec."""

from __future__ import annotations

import numpy as np
import pytest

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.shareable import Shareable
from flarelite.app_common.abstract.fl_model import FLModel, FLModelConst, MetaKey, ParamsType
from flarelite.app_common.utils.fl_model_utils import FLModelUtils
from flarelite.serialization import dumps, loads

# ------------------------------------------------------------------------------------------ FLModel itself


def test_defaults_as_observed():
    m = FLModel()
    assert (m.params_type, m.params, m.optimizer_params, m.metrics) == (None, None, None, None)
    assert (m.start_round, m.current_round, m.total_rounds, m.meta) == (0, None, None, {})


def test_params_type_rules():
    assert FLModel(params={"a": 1}).params_type == ParamsType.FULL
    assert FLModel(params_type="DIFF", params={"a": 1}).params_type is ParamsType.DIFF
    with pytest.raises(ValueError, match="'X' is not a valid ParamsType"):
        FLModel(params_type="X", params={"a": 1})
    for params_type in (ParamsType.FULL, ParamsType.DIFF):
        with pytest.raises(ValueError):
            FLModel(params_type=params_type)


def test_field_types_and_rounds():
    with pytest.raises(TypeError):
        FLModel(metrics=[1])
    with pytest.raises(TypeError):
        FLModel(meta="x")
    with pytest.raises(TypeError):
        FLModel(current_round=1.5)
    with pytest.raises(ValueError):
        FLModel(total_rounds=-1)
    assert FLModel(meta=None).meta == {}


def test_summary_and_str():
    m = FLModel(params={"a": 1, "b": 2}, metrics={"acc": 0.5}, current_round=3, meta={})
    s = m.summary()
    assert s == {"params_type": ParamsType.FULL, "params": 2, "metrics": 1, "current_round": 3}
    assert str(m) == str(s) == repr(m)
    assert FLModelConst.TOTAL_ROUNDS == "total_rounds" and MetaKey.NUM_STEPS_CURRENT_ROUND == "NUM_STEPS_CURRENT_ROUND"


# ------------------------------------------------------------------------------------------ FLModelUtils


def test_to_shareable_observed_example():
    model = FLModel(
        params={"a": 1}, metrics={"acc": 0.5}, current_round=2, total_rounds=5, meta={"NUM_STEPS_CURRENT_ROUND": 10}
    )
    s = FLModelUtils.to_shareable(model)
    assert s.get_header("start_round") == 0
    assert s.get_header("current_round") == 2
    assert s.get_header("num_rounds") == 5
    assert s.get_header("__content_type__") == "DXO"
    dxo = from_shareable(s)
    assert dxo.data_kind == DataKind.WEIGHTS
    assert dxo.data == {"a": 1}
    assert dxo.meta == {"initial_metrics": {"acc": 0.5}, "NUM_STEPS_CURRENT_ROUND": 10}


def test_to_shareable_rules():
    with pytest.raises(ValueError, match="FLModel without params and metrics is NOT supported."):
        FLModelUtils.to_shareable(FLModel())
    m = FLModel(params={"a": 1})
    m.params_type = None
    FLModelUtils.to_shareable(m)
    assert m.params_type == ParamsType.FULL  # mutated, as in NVFlare
    diff = from_shareable(FLModelUtils.to_shareable(FLModel(params_type="DIFF", params={"a": 1})))
    assert diff.data_kind == DataKind.WEIGHT_DIFF
    metrics = from_shareable(FLModelUtils.to_shareable(FLModel(metrics={"acc": 1.0})))
    assert (metrics.data_kind, metrics.data) == (DataKind.METRICS, {"acc": 1.0})
    s = FLModelUtils.to_shareable(FLModel(params={"a": 1}, optimizer_params={"lr": 1}, meta={"validate_type": "v"}))
    assert s.get_header("_validate_type") == "v"
    assert "lr" not in str(from_shareable(s).data)  # optimizer_params are not transmitted


def test_from_shareable_round_trip_and_headers():
    model = FLModel(params={"w": np.ones(3)}, metrics={"m": 1}, current_round=1, total_rounds=4, meta={"k": "v"})
    s = FLModelUtils.to_shareable(model)
    s.set_header("job_id", "simulate_job")
    s.set_header("site_name", "site-1")
    back = FLModelUtils.from_shareable(s)
    assert back.params_type == ParamsType.FULL
    np.testing.assert_array_equal(back.params["w"], np.ones(3))
    assert back.metrics == {"m": 1}
    assert (back.start_round, back.current_round, back.total_rounds) == (0, 1, 4)
    assert back.meta["k"] == "v" and back.meta["initial_metrics"] == {"m": 1}
    assert back.meta["job_id"] == "simulate_job" and back.meta["site_name"] == "site-1"


def test_from_shareable_submit_model_and_other_kinds():
    s = Shareable()
    s.set_header("submit_model_name", "best_model")
    m = FLModelUtils.from_shareable(s)
    assert (m.params, m.params_type, m.meta) == (None, None, {"submit_model_name": "best_model"})
    other = FLModelUtils.from_shareable(DXO(DataKind.COLLECTION, {"x": 1}).to_shareable())
    assert (other.params_type, other.params) == (ParamsType.FULL, {"x": 1})
    assert (
        FLModelUtils.from_shareable(DXO(DataKind.WEIGHT_DIFF, {"x": 1}).to_shareable()).params_type is ParamsType.DIFF
    )


def test_dxo_round_trip_drops_start_round():
    model = FLModel(params_type="DIFF", params={"a": 1}, metrics={"m": 2}, start_round=3, current_round=4)
    dxo = FLModelUtils.to_dxo(model)
    assert dxo.data_kind == DataKind.FL_MODEL
    back = FLModelUtils.from_dxo(dxo)
    assert back.params_type == ParamsType.DIFF and back.params == {"a": 1} and back.metrics == {"m": 2}
    assert back.current_round == 4 and back.start_round is None
    with pytest.raises(ValueError):
        FLModelUtils.from_dxo(DXO(DataKind.WEIGHTS, {"a": 1}))


def test_model_learnable_meta_and_update():
    ml = FLModelUtils.to_model_learnable(FLModel(params={"a": 1.0}, meta={"x": 1}))
    back = FLModelUtils.from_model_learnable(ml)
    assert back.params == {"a": 1.0} and back.meta == {"x": 1} and back.params_type == ParamsType.FULL
    FLModelUtils.set_meta_prop(back, "configs", {"lr": 1})
    assert FLModelUtils.get_configs(back) == {"lr": 1} and FLModelUtils.get_meta_prop(back, "nope", 7) == 7
    with pytest.raises(TypeError):
        FLModelUtils.get_meta_prop({}, "x")
    base = FLModel(params={"a": 1.0, "b": 2.0})
    FLModelUtils.update_model(base, FLModel(params_type="DIFF", params={"a": 0.5}, metrics={"m": 1}))
    assert base.params == {"a": 1.5, "b": 2.0} and base.metrics == {"m": 1}
    with pytest.raises(RuntimeError):
        FLModelUtils.update_model(FLModel(params_type="DIFF", params={"a": 1}), base)


# ------------------------------------------------------------------------------------------ through the codec


def test_numpy_params_through_the_codec():
    params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(2, dtype=np.int64)}
    model = FLModel(
        params=params, metrics={"acc": np.float32(0.25)}, current_round=1, meta={"NUM_STEPS_CURRENT_ROUND": 5}
    )
    back = FLModelUtils.from_shareable(loads(dumps(FLModelUtils.to_shareable(model))))
    assert isinstance(back, FLModel) and back.params_type == ParamsType.FULL
    for key, value in params.items():
        np.testing.assert_array_equal(back.params[key], value)
        assert back.params[key].dtype == value.dtype
    assert back.metrics == {"acc": np.float32(0.25)} and back.current_round == 1
    assert back.meta["NUM_STEPS_CURRENT_ROUND"] == 5


def test_torch_params_through_the_codec():
    torch = pytest.importorskip("torch")
    params = {"fc.weight": torch.randn(3, 2), "fc.bias": torch.zeros(3, dtype=torch.bfloat16)}
    shareable = loads(dumps(FLModelUtils.to_shareable(FLModel(params_type="DIFF", params=params, current_round=0))))
    back = FLModelUtils.from_shareable(shareable)
    assert back.params_type == ParamsType.DIFF
    for key, value in params.items():
        assert isinstance(back.params[key], torch.Tensor) and back.params[key].dtype == value.dtype
        assert torch.equal(back.params[key], value)
    dxo_back = FLModelUtils.from_dxo(loads(dumps(FLModelUtils.to_dxo(FLModel(params=params)))))
    assert torch.equal(dxo_back.params["fc.weight"], params["fc.weight"]) and dxo_back.params_type == ParamsType.FULL
