"""Unit tests of the user-facing contracts in flarelite.apis (NVFlare 2.9 API surface, nvflare-api.md 1.1-1.10)."""

from __future__ import annotations

import inspect
import logging
import time
from enum import Enum

import numpy as np
import pytest

import flarelite
from flarelite.apis import controller_spec, dxo, event_type, executor, fl_component, fl_constant, fl_context, signal
from flarelite.apis import shareable as shareable_mod
from flarelite.apis.client import Client
from flarelite.apis.controller_spec import (
    ClientTask,
    OperatorMethod,
    SendOrder,
    Task,
    TaskCompletionStatus,
)
from flarelite.apis.dxo import DXO, DataKind, MetaKey, from_bytes, from_file, from_shareable, get_leaf_dxos
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_component import FLComponent
from flarelite.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode, SiteType
from flarelite.apis.fl_context import FLContext, FLContextManager, peer_context_from_props
from flarelite.apis.impl import controller as controller_mod
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_copy, make_reply
from flarelite.apis.signal import Signal
from flarelite.apis.wf_comm_spec import WFCommSpec
from flarelite.serialization import dumps

# ------------------------------------------------------------------------------------------------ helpers


def _ctx(identity: str = "site-1", job_id: str = "job1", engine=None) -> FLContext:
    return FLContextManager(engine=engine, identity_name=identity, job_id=job_id).new_context()


def _records_of(caplog, logger_name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger_name]


class _FakeEngine:
    """Records fire_event calls (the only engine method FLComponent's event/log paths use)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        self.events.append(event_type)

    def abort_run(self, reason: str, fl_ctx: FLContext | None = None) -> None:
        self.events.append(f"abort:{reason}")


# ================================================================================================ shareable.py


RESERVED_HEADER_KEYS = {
    "HEADERS": "__headers__",
    "TOPIC": "__topic__",
    "RC": "__rc__",
    "COOKIE_JAR": "__cookie_jar__",
    "PEER_PROPS": "__peer_props__",
    "REPLY_IS_LATE": "__reply_is_late__",
    "TASK_NAME": "__task_name__",
    "TASK_ID": "__task_id__",
    "WORKFLOW": "__workflow__",
    "AUDIT_EVENT_ID": "__audit_event_id__",
    "CONTENT_TYPE": "__content_type__",
    "TASK_OPERATOR": "__task_operator__",
    "ERROR": "__error__",
    "PEER_CTX": "__peer_ctx__",
    "MSG_ROOT_ID": "__msg_root_id__",
    "MSG_ROOT_TTL": "__msg_root_ttl__",
    "PASS_THROUGH": "__pass_through__",
}


class TestShareable:
    def test_reserved_header_keys(self):
        for name, value in RESERVED_HEADER_KEYS.items():
            assert getattr(ReservedHeaderKey, name) == value, name
        assert ReservedHeaderKey.PEER_CTX == ReservedKey.PEER_CTX

    def test_always_has_headers(self):
        s = Shareable()
        assert isinstance(s, dict)
        assert s == {"__headers__": {}}
        s2 = Shareable({"a": 1})
        assert s2["a"] == 1
        assert s2["__headers__"] == {}

    def test_set_get_header(self):
        s = Shareable()
        s.set_header("k", [1, 2])
        assert s.get_header("k") == [1, 2]
        assert s["__headers__"]["k"] == [1, 2]
        assert s.get_header("missing") is None
        assert s.get_header("missing", "dflt") == "dflt"

    def test_return_code(self):
        s = Shareable()
        assert s.get_return_code() == ReturnCode.OK
        assert s.get_return_code("X") == "X"
        s.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
        assert s.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
        assert s.get_header(ReservedHeaderKey.RC) == "EXECUTION_EXCEPTION"

    def test_cookies(self):
        s = Shareable()
        assert s.get_cookie_jar() is None
        assert s.get_cookie("a") is None
        assert s.get_cookie("a", 7) == 7
        s.add_cookie("a", 1)
        s.add_cookie("b", {"x": 2})
        assert s.get_cookie("a") == 1
        assert s.get_cookie("b") == {"x": 2}
        assert s.get_cookie("c", "d") == "d"
        assert s.get_cookie_jar() == {"a": 1, "b": {"x": 2}}
        assert s.get_header(ReservedHeaderKey.COOKIE_JAR) == {"a": 1, "b": {"x": 2}}
        s.set_cookie_jar({"z": 9})
        assert s.get_cookie_jar() == {"z": 9}
        assert s.get_cookie("a") is None
        assert s.get_cookie("z") == 9

    def test_peer_props(self):
        s = Shareable()
        assert s.get_peer_props() is None
        assert s.get_peer_prop(ReservedKey.IDENTITY_NAME, "none") == "none"
        s.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1", ReservedKey.RUN_NUM: "job1"})
        assert s.get_peer_props() == {"__identity_name__": "site-1", "__run_num__": "job1"}
        assert s.get_header(ReservedHeaderKey.PEER_PROPS) == s.get_peer_props()
        assert s.get_peer_prop(ReservedKey.IDENTITY_NAME, None) == "site-1"
        assert s.get_peer_prop("missing", 42) == 42

    def test_get_peer_prop_default_is_required(self):
        param = inspect.signature(Shareable.get_peer_prop).parameters["default"]
        assert param.default is inspect.Parameter.empty
        s = Shareable()
        s.set_peer_props({"k": 1})
        with pytest.raises(TypeError):
            s.get_peer_prop("k")  # type: ignore[call-arg]

    def test_peer_context(self):
        s = Shareable()
        assert s.get_peer_context() is None
        peer = {ReservedKey.IDENTITY_NAME: "site-2"}
        s.set_peer_context(peer)
        assert s.get_peer_context() == peer
        assert s.get_header(ReservedHeaderKey.PEER_CTX) == peer

    def test_make_reply_holds_only_headers(self):
        r = make_reply(ReturnCode.TASK_UNKNOWN)
        assert isinstance(r, Shareable)
        assert list(r.keys()) == ["__headers__"]
        assert r["__headers__"] == {"__rc__": "TASK_UNKNOWN"}
        assert r.get_return_code() == ReturnCode.TASK_UNKNOWN

        r2 = make_reply(ReturnCode.ERROR, headers={"x": 1, ReservedHeaderKey.ERROR: "why"})
        assert list(r2.keys()) == ["__headers__"]
        assert r2["__headers__"] == {"__rc__": "ERROR", "x": 1, "__error__": "why"}

    def test_make_copy_shallow_content_deep_headers(self):
        arr = np.arange(4)
        nested = {"inner": [1, 2]}
        src = Shareable({"arr": arr, "nested": nested})
        src.set_header("h", {"deep": [1]})
        src.set_header("drop", 1)

        c = make_copy(src)
        assert isinstance(c, Shareable)
        assert c is not src
        assert c["arr"] is arr  # shallow content
        assert c["nested"] is nested
        assert c["__headers__"] == src["__headers__"]
        assert c["__headers__"] is not src["__headers__"]
        c.get_header("h")["deep"].append(2)  # deep headers: the source does not change
        assert src.get_header("h") == {"deep": [1]}
        c["new"] = 1
        assert "new" not in src

        c2 = make_copy(src, exclude_headers=["drop", "not-there"])
        assert c2.get_header("drop") is None
        assert c2.get_header("h") == {"deep": [1]}
        assert src.get_header("drop") == 1

    def test_bytes_round_trip_with_numpy(self):
        s = Shareable({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "meta": {"n": 3, "names": ["a", "b"]}})
        s.set_return_code(ReturnCode.OK)
        s.set_header(ReservedHeaderKey.TOPIC, "t")
        s.add_cookie("c", 1)
        data = s.to_bytes()
        assert isinstance(data, bytes)
        back = Shareable.from_bytes(data)
        assert type(back) is Shareable
        assert back["__headers__"] == s["__headers__"]
        assert back["meta"] == {"n": 3, "names": ["a", "b"]}
        assert isinstance(back["w"], np.ndarray)
        assert back["w"].dtype == np.float32
        assert back["w"].shape == (2, 3)
        np.testing.assert_array_equal(back["w"], s["w"])

    def test_from_bytes_of_non_shareable_raises_value_error(self):
        with pytest.raises(ValueError):
            Shareable.from_bytes(dumps({"a": 1}))
        with pytest.raises(ValueError):
            Shareable.from_bytes(DXO(DataKind.WEIGHTS, {"a": 1}).to_bytes())


# ================================================================================================ dxo.py

DATA_KINDS = [
    "FL_MODEL",
    "WEIGHTS",
    "WEIGHT_DIFF",
    "METRICS",
    "ANALYTIC",
    "COLLECTION",
    "STATISTICS",
    "PSI",
    "APP_DEFINED",
]


class TestDXO:
    def test_data_kind_is_str_enum_with_values_equal_names(self):
        assert issubclass(DataKind, str)
        assert issubclass(DataKind, Enum)
        assert [m.name for m in DataKind] == DATA_KINDS
        for m in DataKind:
            assert m.value == m.name
            assert m == m.name  # compares equal to the plain string
            assert isinstance(m, str)
        assert DataKind("WEIGHTS") is DataKind.WEIGHTS

    def test_meta_keys(self):
        assert MetaKey.FILTER_HISTORY == "filter_history"
        assert MetaKey.CURRENT_ROUND == "current_round"
        assert MetaKey.TOTAL_ROUNDS == "total_rounds"
        assert MetaKey.INITIAL_METRICS == "initial_metrics"
        assert MetaKey.CONFIGS == "configs"
        assert MetaKey.VALIDATE_TYPE == "validate_type"
        assert issubclass(MetaKey, fl_constant.FLMetaKey)

    def test_none_data_and_meta_become_dicts(self):
        d = DXO(DataKind.WEIGHTS, None)
        assert d.data == {}
        assert d.meta == {}
        assert d.validate() == ""

    def test_plain_string_kind_is_accepted(self):
        d = DXO("WEIGHTS", {"a": 1})
        assert d.data_kind == DataKind.WEIGHTS

    @pytest.mark.parametrize("kind", [k for k in DATA_KINDS if k != "APP_DEFINED"])
    def test_non_dict_data_is_invalid(self, kind):
        with pytest.raises(ValueError, match="invalid DXO"):
            DXO(kind, [1, 2, 3])

    def test_app_defined_allows_non_dict_data(self):
        d = DXO(DataKind.APP_DEFINED, [1, 2, 3])
        assert d.data == [1, 2, 3]
        assert d.validate() == ""

    def test_meta_must_be_dict(self):
        with pytest.raises(ValueError, match="invalid DXO"):
            DXO(DataKind.WEIGHTS, {}, meta=[("a", 1)])
        with pytest.raises(ValueError, match="invalid DXO"):
            DXO(DataKind.APP_DEFINED, [1], meta="m")

    def test_meta_props(self):
        d = DXO(DataKind.METRICS, {"acc": 0.5}, meta={"a": 1})
        assert d.get_meta_prop("a") == 1
        assert d.get_meta_prop("b") is None
        assert d.get_meta_prop("b", "x") == "x"
        d.set_meta_prop("b", 2)
        assert d.get_meta_props() == {"a": 1, "b": 2}
        d.remove_meta_props(["a", "not-there"])
        assert d.get_meta_props() == {"b": 2}

    def test_update_meta_props_deep_copies(self):
        d = DXO(DataKind.WEIGHTS, {})
        src = {"cfg": {"lr": [0.1]}}
        d.update_meta_props(src)
        src["cfg"]["lr"].append(0.2)
        src["cfg"]["new"] = 1
        assert d.get_meta_prop("cfg") == {"lr": [0.1]}

    def test_to_dict(self):
        d = DXO(DataKind.WEIGHTS, {"w": 1}, {"m": 2})
        assert d.to_dict() == {"kind": "WEIGHTS", "data": {"w": 1}, "meta": {"m": 2}}

    def test_to_shareable(self):
        d = DXO(DataKind.WEIGHTS, {"w": 1}, {"m": 2})
        s = d.to_shareable()
        assert isinstance(s, Shareable)
        assert s.get_header(ReservedHeaderKey.CONTENT_TYPE) == "DXO"
        assert s["DXO"] == {"kind": "WEIGHTS", "data": {"w": 1}, "meta": {"m": 2}}
        back = from_shareable(s)
        assert back == d
        assert back.data_kind == DataKind.WEIGHTS

    def test_update_shareable_keeps_existing_headers(self):
        s = Shareable()
        s.set_header("keep", 1)
        s.set_return_code(ReturnCode.OK)
        out = DXO(DataKind.METRICS, {"acc": 1.0}).update_shareable(s)
        assert out is s
        assert s.get_header("keep") == 1
        assert s.get_header(ReservedHeaderKey.CONTENT_TYPE) == "DXO"
        assert from_shareable(s).data == {"acc": 1.0}

    def test_from_shareable_of_bare_reply_explains(self):
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        with pytest.raises(ValueError) as ei:
            from_shareable(reply)
        assert "EXECUTION_EXCEPTION" in str(ei.value)  # the message names the return code

    def test_from_shareable_of_non_shareable(self):
        with pytest.raises(ValueError):
            from_shareable({"DXO": {"kind": "WEIGHTS", "data": {}, "meta": {}}})  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            from_shareable(None)  # type: ignore[arg-type]

    def test_from_shareable_with_bad_content(self):
        s = Shareable()
        s.set_header(ReservedHeaderKey.CONTENT_TYPE, "DXO")
        s["DXO"] = [1, 2]
        with pytest.raises(ValueError):
            from_shareable(s)

    def test_dxo_survives_shareable_bytes(self):
        d = DXO(DataKind.WEIGHTS, {"w": np.ones((2, 2), dtype=np.float64)}, {MetaKey.CURRENT_ROUND: 3})
        back = from_shareable(Shareable.from_bytes(d.to_shareable().to_bytes()))
        assert back.data_kind == DataKind.WEIGHTS
        assert back.get_meta_prop(MetaKey.CURRENT_ROUND) == 3
        np.testing.assert_array_equal(back.data["w"], d.data["w"])

    def test_bytes_round_trip(self):
        d = DXO(DataKind.WEIGHT_DIFF, {"w": np.arange(5, dtype=np.int64), "b": 1.5}, {"m": [1, "x"]})
        b = d.to_bytes()
        assert isinstance(b, bytes)
        back = from_bytes(b)
        assert isinstance(back, DXO)
        assert back.data_kind == DataKind.WEIGHT_DIFF
        assert back.meta == {"m": [1, "x"]}
        assert back.data["b"] == 1.5
        np.testing.assert_array_equal(back.data["w"], np.arange(5))
        assert back.data["w"].dtype == np.int64

    def test_file_round_trip(self, tmp_path):
        d = DXO(DataKind.APP_DEFINED, [1, 2, {"a": np.zeros(3)}], {"m": 1})
        path = tmp_path / "dxo.bin"
        d.to_file(str(path))
        assert path.stat().st_size > 0
        back = from_file(str(path))
        assert back.data_kind == DataKind.APP_DEFINED
        assert back.data[:2] == [1, 2]
        np.testing.assert_array_equal(back.data[2]["a"], np.zeros(3))
        assert back.meta == {"m": 1}

    def test_from_bytes_of_shareable_raises(self):
        with pytest.raises(ValueError):
            from_bytes(Shareable({"a": 1}).to_bytes())
        with pytest.raises(ValueError):
            from_bytes(DXO(DataKind.WEIGHTS, {}).to_shareable().to_bytes())

    def test_get_leaf_dxos_on_collection_tree(self):
        a = DXO(DataKind.WEIGHTS, {"w": 1})
        c = DXO(DataKind.METRICS, {"acc": 0.9})
        d = DXO(DataKind.WEIGHT_DIFF, {"w": 2})
        tree = DXO(
            DataKind.COLLECTION,
            {"a": a, "b": DXO(DataKind.COLLECTION, {"c": c, "d": d})},
        )
        leaves, errors = get_leaf_dxos(tree, "root")
        assert errors == []
        assert leaves == {"root.a": a, "root.b.c": c, "root.b.d": d}
        assert leaves["root.b.c"] is c

    def test_get_leaf_dxos_of_a_leaf(self):
        a = DXO(DataKind.WEIGHTS, {"w": 1})
        leaves, errors = get_leaf_dxos(a, "x")
        assert leaves == {"x": a}
        assert errors == []

    def test_get_leaf_dxos_reports_non_dxo_children(self):
        tree = DXO(DataKind.COLLECTION, {"ok": DXO(DataKind.WEIGHTS, {}), "bad": 5})
        leaves, errors = get_leaf_dxos(tree, "r")
        assert list(leaves) == ["r.ok"]
        assert len(errors) == 1
        assert "bad" in errors[0]

    def test_get_leaf_dxos_survives_a_cycle(self):
        tree = DXO(DataKind.COLLECTION, {"leaf": DXO(DataKind.WEIGHTS, {})})
        tree.data["self"] = tree
        leaves, _errors = get_leaf_dxos(tree, "r")
        assert list(leaves) == ["r.leaf"]

    def test_filter_history(self):
        d = DXO(DataKind.WEIGHTS, {})
        assert d.get_filter_history() is None
        d.add_filter_history("f1")
        d.add_filter_history(["f2", "f3"])
        assert d.get_filter_history() == ["f1", "f2", "f3"]
        assert d.get_meta_prop(MetaKey.FILTER_HISTORY) == ["f1", "f2", "f3"]

    def test_filter_history_ignores_empty_name(self):
        d = DXO(DataKind.WEIGHTS, {})
        d.add_filter_history("")
        d.add_filter_history([])
        assert d.get_filter_history() is None


# ================================================================================================ fl_constant.py

RETURN_CODES = """OK BAD_PEER_CONTEXT BAD_REQUEST_DATA BAD_TASK_DATA COMMUNICATION_ERROR TIMEOUT ERROR
EXECUTION_EXCEPTION EXECUTION_RESULT_ERROR HANDLER_EXCEPTION MISSING_PEER_CONTEXT RUN_MISMATCH
TASK_ABORTED TASK_DATA_FILTER_ERROR TASK_RESULT_FILTER_ERROR TASK_UNKNOWN TASK_UNSUPPORTED
TOPIC_UNKNOWN MODEL_UNRECOGNIZED VALIDATE_TYPE_UNKNOWN EMPTY_RESULT UNSAFE_JOB EARLY_TERMINATION
SERVER_NOT_READY SERVICE_UNAVAILABLE""".split()

RESERVED_KEYS = """MANAGER ENGINE AUX_RUNNER RUN_NUM IDENTITY_NAME FQSN IS_LEAF PEER_CTX RC COOKIE_JAR
WORKSPACE_ROOT APP_ROOT CLIENT_NAME CLIENT_TYPE TASK_NAME TASK_DATA TASK_RESULT TASK_ID EVENT_ID
AUDIT_EVENT_ID IS_RESEND RUNNER WORKFLOW REPLY EVENT_ORIGIN EVENT_ORIGIN_SITE EVENT_DATA EVENT_SCOPE
RUN_ABORT_SIGNAL RUN_ABORT_REQUESTED SHAREABLE SHARED_FL_CONTEXT ARGS WORKSPACE_OBJECT RANK_NUMBER
NUM_OF_PROCESSES FROM_RANK_NUMBER SECURE_MODE SIMULATE_MODE JOB_INFO JOB_META CURRENT_JOB_ID
JOB_RUN_NUMBER JOB_DEPLOY_DETAIL FATAL_SYSTEM_ERROR JOB_IS_UNSAFE CUSTOM_PROPS EXCEPTIONS PROCESS_TYPE
JOB_PROCESS_ARGS TASK_IS_READY""".split()

# FLContextKey names that are aliases of the ReservedKey entry with the same name
FL_CONTEXT_KEY_SAME_NAME = """TASK_NAME TASK_DATA TASK_RESULT TASK_ID EVENT_DATA EVENT_SCOPE CLIENT_NAME
WORKSPACE_ROOT APP_ROOT RUNNER WORKFLOW SHAREABLE RUN_ABORT_SIGNAL ARGS REPLY JOB_META CUSTOM_PROPS
FATAL_SYSTEM_ERROR PROCESS_TYPE""".split()


def _upper_attrs(cls) -> dict:
    return {k: v for k, v in vars(cls).items() if k.isupper() and not k.startswith("_")}


class TestFLConstant:
    def test_return_codes_equal_their_names(self):
        for name in RETURN_CODES:
            assert getattr(ReturnCode, name) == name, name
        for name, value in _upper_attrs(ReturnCode).items():
            assert value == name, name

    def test_reserved_keys(self):
        assert ReservedKey.ENGINE == "__engine__"
        assert ReservedKey.RUN_NUM == "__run_num__"
        assert ReservedKey.IDENTITY_NAME == "__identity_name__"
        assert ReservedKey.PEER_CTX == "__peer_ctx__"
        assert ReservedKey.RC == "__rc__"
        missing = [n for n in RESERVED_KEYS if not hasattr(ReservedKey, n)]
        assert missing == []
        for name, value in _upper_attrs(ReservedKey).items():
            assert value == f"__{name.lower()}__", name

    def test_site_type(self):
        assert SiteType.SERVER == "server"
        assert SiteType.SERVER_PARENT == "server_parent"
        assert SiteType.CLIENT == "client"
        assert SiteType.ALL == "@ALL"

    def test_fl_context_key_aliases(self):
        for name in FL_CONTEXT_KEY_SAME_NAME:
            assert getattr(FLContextKey, name) == getattr(ReservedKey, name), name
        assert FLContextKey.CURRENT_RUN == ReservedKey.RUN_NUM
        assert FLContextKey.PEER_CONTEXT == ReservedKey.PEER_CTX
        assert FLContextKey.DISCONNECTED_CLIENT_NAME == "_disconnected_client_name"
        for name in ("RECONNECTED_CLIENT_NAME", "CELL_MESSAGE", "CLIENT_HIERARCHY"):
            assert isinstance(getattr(FLContextKey, name), str)

    def test_process_type_and_job_constants(self):
        pt = fl_constant.ProcessType
        assert {pt.SP, pt.SJ, pt.CP, pt.CJ} == {"SP", "SJ", "CP", "CJ"}
        jc = fl_constant.JobConstants
        assert jc.SERVER_JOB_CONFIG == "config_fed_server.json"
        assert jc.CLIENT_JOB_CONFIG == "config_fed_client.json"
        assert jc.META_FILE == "meta.json"

    def test_reserved_topics(self):
        values = set(_upper_attrs(fl_constant.ReservedTopic).values())
        for topic in (
            "__end_run__",
            "__abort_task__",
            "__do_task__",
            "__aux_command__",
            "__sync_runner__",
            "__job_heartbeat__",
            "__task_check__",
        ):
            assert topic in values


# ================================================================================================ event_type.py

EVENT_TYPES = """SYSTEM_START SYSTEM_END ABOUT_TO_START_RUN START_RUN ABOUT_TO_END_RUN END_RUN
CHECK_END_RUN_READINESS SWAP_IN SWAP_OUT START_WORKFLOW END_WORKFLOW ABORT_TASK FATAL_SYSTEM_ERROR
JOB_DEPLOYED JOB_STARTED JOB_COMPLETED JOB_ABORTED JOB_CANCELLED
CLIENT_DISCONNECTED CLIENT_RECONNECTED
BEFORE_PULL_TASK AFTER_PULL_TASK BEFORE_PROCESS_TASK_REQUEST AFTER_PROCESS_TASK_REQUEST
BEFORE_PROCESS_SUBMISSION AFTER_PROCESS_SUBMISSION
BEFORE_TASK_DATA_FILTER AFTER_TASK_DATA_FILTER BEFORE_TASK_RESULT_FILTER AFTER_TASK_RESULT_FILTER
BEFORE_TASK_EXECUTION AFTER_TASK_EXECUTION BEFORE_SEND_TASK_RESULT AFTER_SEND_TASK_RESULT
BEFORE_PROCESS_RESULT_OF_UNKNOWN_TASK AFTER_PROCESS_RESULT_OF_UNKNOWN_TASK
CRITICAL_LOG_AVAILABLE ERROR_LOG_AVAILABLE EXCEPTION_LOG_AVAILABLE WARNING_LOG_AVAILABLE
INFO_LOG_AVAILABLE DEBUG_LOG_AVAILABLE PRE_RUN_RESULT_AVAILABLE
BEFORE_CHECK_CLIENT_RESOURCES AFTER_CHECK_CLIENT_RESOURCES SUBMIT_JOB DEPLOY_JOB_TO_SERVER
DEPLOY_JOB_TO_CLIENT BEFORE_CHECK_RESOURCE_MANAGER BEFORE_SEND_ADMIN_COMMAND
BEFORE_CLIENT_REGISTER AFTER_CLIENT_REGISTER CLIENT_REGISTER_RECEIVED CLIENT_REGISTER_PROCESSED
CLIENT_QUIT SYSTEM_BOOTSTRAP
BEFORE_CLIENT_HEARTBEAT AFTER_CLIENT_HEARTBEAT CLIENT_HEARTBEAT_RECEIVED CLIENT_HEARTBEAT_PROCESSED
AUTHORIZE_COMMAND_CHECK BEFORE_BUILD_COMPONENT BEFORE_JOB_LAUNCH AFTER_JOB_LAUNCH
TASK_RESULT_RECEIVED TASK_ASSIGNMENT_SENT POST_TASK_ASSIGNMENT_SENT POST_TASK_RESULT_RECEIVED""".split()


class TestEventType:
    def test_every_documented_event_exists(self):
        missing = [n for n in EVENT_TYPES if not hasattr(EventType, n)]
        assert missing == []

    def test_values_are_underscore_lowercase_name(self):
        attrs = _upper_attrs(EventType)
        assert len(attrs) >= len(EVENT_TYPES)
        wrong = {k: v for k, v in attrs.items() if v != "_" + k.lower()}
        assert wrong == {}
        assert len(set(attrs.values())) == len(attrs)  # no two events share a value

    def test_examples(self):
        assert EventType.START_RUN == "_start_run"
        assert EventType.END_RUN == "_end_run"
        assert EventType.SYSTEM_START == "_system_start"


# ================================================================================================ signal.py


class TestSignal:
    def test_initial_state(self):
        s = Signal()
        assert s.triggered is False
        assert s.value is None
        assert s.trigger_time is None

    def test_trigger_and_reset(self):
        s = Signal()
        before = time.time()
        s.trigger("abort")
        after = time.time()
        assert s.triggered is True
        assert s.value == "abort"
        assert before <= s.trigger_time <= after
        s.reset()
        assert s.triggered is False
        assert s.value is None
        assert s.trigger_time is None
        s.reset("v")
        assert s.value == "v"
        assert s.triggered is False

    def test_child_follows_parent(self):
        parent = Signal()
        child = Signal(parent=parent)
        grandchild = Signal(parent=child)
        assert not child.triggered and not grandchild.triggered
        parent.trigger(True)
        assert child.triggered
        assert grandchild.triggered
        parent.reset()
        assert not child.triggered
        assert not grandchild.triggered

    def test_child_does_not_trigger_parent(self):
        parent = Signal()
        child = Signal(parent=parent)
        child.trigger(1)
        assert child.triggered
        assert not parent.triggered

    def test_wait_returns_at_once_when_triggered(self):
        s = Signal()
        s.trigger(1)
        assert s.wait(timeout=5) is True
        assert Signal().wait(timeout=0) is False


# ================================================================================================ fl_context.py


class TestFLContext:
    def test_set_get_prop(self):
        ctx = FLContext()
        assert ctx.get_prop("k") is None
        assert ctx.get_prop("k", 3) == 3
        assert ctx.set_prop("k", 1) is True
        assert ctx.get_prop("k") == 1
        assert ctx.set_prop("k", 2) is True  # same mask: value changes
        assert ctx.get_prop("k") == 2
        assert "k" in ctx.get_prop_keys()

    def test_prop_detail_and_default_mask(self):
        ctx = FLContext()
        ctx.set_prop("k", 1)
        assert ctx.get_prop_detail("k") == {"value": 1, "private": True, "sticky": True}
        ctx.set_prop("p", 2, private=False, sticky=False)
        assert ctx.get_prop_detail("p") == {"value": 2, "private": False, "sticky": False}
        assert ctx.get_prop_detail("none") is None

    def test_mask_change_is_refused(self, caplog):
        ctx = FLContext()
        assert ctx.set_prop("k", "old", private=True, sticky=False) is True
        with caplog.at_level(logging.WARNING):
            assert ctx.set_prop("k", "new", private=False, sticky=False) is False
            assert ctx.set_prop("k", "new", private=True, sticky=True) is False
        assert ctx.get_prop("k") == "old"
        assert ctx.get_prop_detail("k") == {"value": "old", "private": True, "sticky": False}
        assert any("k" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    def test_put(self):
        ctx = FLContext()
        ctx.put("k", 1, private=False, sticky=False)
        assert ctx.get_prop_detail("k") == {"value": 1, "private": False, "sticky": False}

    def test_public_and_private_props(self):
        ctx = FLContext()
        ctx.set_prop("secret", 1, private=True, sticky=False)
        ctx.set_prop("shown", 2, private=False, sticky=False)
        ctx.set_prop("shown_sticky", 3, private=False, sticky=True)
        public = ctx.get_all_public_props()
        assert public == {"shown": 2, "shown_sticky": 3}
        assert ctx.public_key_exists("shown")
        assert not ctx.public_key_exists("secret")
        assert not ctx.public_key_exists("none")

    def test_set_public_props(self):
        ctx = FLContext()
        ctx.set_public_props({"a": 1, "b": 2})
        assert ctx.get_all_public_props() == {"a": 1, "b": 2}
        assert ctx.get_prop_detail("a")["private"] is False

    def test_manager_new_context_holds_engine_job_and_identity(self):
        engine = object()
        mgr = FLContextManager(engine=engine, identity_name="site-1", job_id="job1")
        ctx = mgr.new_context()
        assert ctx.get_engine() is engine
        assert ctx.get_job_id() == "job1"
        assert ctx.get_identity_name() == "site-1"
        run = ctx.get_prop_detail(ReservedKey.RUN_NUM)
        assert run["private"] is False and run["sticky"] is True
        ident = ctx.get_prop_detail(ReservedKey.IDENTITY_NAME)
        assert ident["private"] is False and ident["sticky"] is False
        assert ctx.get_all_public_props()[ReservedKey.IDENTITY_NAME] == "site-1"
        assert ReservedKey.ENGINE not in ctx.get_all_public_props()

    def test_manager_stickers(self):
        mgr = FLContextManager(identity_name="s", job_id="j", public_stickers={"pub": 1}, private_stickers={"prv": 2})
        ctx = mgr.new_context()
        assert ctx.get_prop("pub") == 1
        assert ctx.get_prop("prv") == 2
        assert "pub" in ctx.get_all_public_props()
        assert "prv" not in ctx.get_all_public_props()
        assert ctx.get_prop_detail("pub")["sticky"] and ctx.get_prop_detail("prv")["sticky"]

    def test_sticky_props_carry_into_later_contexts(self):
        mgr = FLContextManager(identity_name="site-1", job_id="job1")
        with mgr.new_context() as ctx:
            ctx.set_prop("sticky_pub", "a", private=False, sticky=True)
            ctx.set_prop("sticky_prv", "b", private=True, sticky=True)
            ctx.set_prop("transient", "c", private=False, sticky=False)
        later = mgr.new_context()
        assert later.get_prop("sticky_pub") == "a"
        assert later.get_prop("sticky_prv") == "b"
        assert later.get_prop("transient") is None
        assert later.get_prop_detail("sticky_pub") == {"value": "a", "private": False, "sticky": True}
        assert later.get_prop_detail("sticky_prv") == {"value": "b", "private": True, "sticky": True}
        assert later.get_identity_name() == "site-1"  # identity is re-set each time (non-sticky)

    def test_sticky_mask_is_checked_against_the_manager(self):
        mgr = FLContextManager(identity_name="site-1", job_id="job1")
        first = mgr.new_context()
        second = mgr.new_context()  # made before the sticker exists
        assert first.set_prop("k", 1, private=False, sticky=True) is True
        assert second.set_prop("k", 2, private=True, sticky=True) is False
        assert mgr.new_context().get_prop_detail("k") == {"value": 1, "private": False, "sticky": True}

    def test_identity_and_job_getters_defaults(self):
        ctx = FLContext()
        assert ctx.get_identity_name() == ""
        assert ctx.get_identity_name("anon") == "anon"
        assert ctx.get_job_id() is None
        assert ctx.get_job_id("j") == "j"
        assert ctx.get_engine() is None
        assert ctx.get_engine("e") == "e"
        assert ctx.get_run_abort_signal() is None
        sig = Signal()
        ctx.set_prop(ReservedKey.RUN_ABORT_SIGNAL, sig, private=True, sticky=False)
        assert ctx.get_run_abort_signal() is sig
        ctx.set_prop(ReservedKey.IDENTITY_NAME, "server", private=False, sticky=False)
        ctx.set_prop(ReservedKey.RUN_NUM, "simulate_job", private=False, sticky=True)
        assert ctx.get_identity_name() == "server"
        assert ctx.get_job_id() == "simulate_job"

    def test_remove_prop_keeps_reserved_unless_forced(self):
        ctx = FLContext()
        ctx.set_prop("__reserved__", 1, private=True, sticky=False)
        ctx.set_prop("plain", 2, private=True, sticky=False)
        ctx.remove_prop("plain")
        assert ctx.get_prop("plain") is None
        ctx.remove_prop("__reserved__")
        assert ctx.get_prop("__reserved__") == 1
        ctx.remove_prop("__reserved__", force_removal=True)
        assert ctx.get_prop("__reserved__") is None
        ctx.remove_prop("never-set")  # no error

    def test_remove_prop_keeps_identity(self):
        ctx = _ctx()
        ctx.remove_prop(ReservedKey.IDENTITY_NAME)
        ctx.remove_prop(ReservedKey.RUN_NUM)
        assert ctx.get_identity_name() == "site-1"
        assert ctx.get_job_id() == "job1"

    def test_clone(self):
        ctx = _ctx()
        ctx.set_prop("a", [1], private=False, sticky=False)
        c = ctx.clone()
        assert isinstance(c, FLContext)
        assert c is not ctx
        assert c.get_prop("a") == [1]
        assert c.get_identity_name() == "site-1"
        assert c.get_job_id() == "job1"
        assert c.get_prop_detail("a") == ctx.get_prop_detail("a")
        c.set_prop("only_clone", 1, private=True, sticky=False)
        assert ctx.get_prop("only_clone") is None
        ctx.set_prop("only_orig", 1, private=True, sticky=False)
        assert c.get_prop("only_orig") is None

    def test_peer_context(self):
        ctx = _ctx()
        assert ctx.get_peer_context() is None
        peer = peer_context_from_props({ReservedKey.IDENTITY_NAME: "site-2", ReservedKey.RUN_NUM: "job1"})
        ctx.set_peer_context(peer)
        assert ctx.get_peer_context() is peer
        assert ctx.get_prop(FLContextKey.PEER_CONTEXT) is peer
        assert FLContextKey.PEER_CONTEXT not in ctx.get_all_public_props()  # never travels as a public prop
        assert peer.get_identity_name() == "site-2"
        assert peer.get_job_id() == "job1"

    def test_peer_context_from_props(self):
        assert peer_context_from_props(None) is None
        assert peer_context_from_props("x") is None  # type: ignore[arg-type]
        peer = peer_context_from_props({ReservedKey.IDENTITY_NAME: "site-3", "custom": 5})
        assert isinstance(peer, FLContext)
        assert peer.get_all_public_props() == {ReservedKey.IDENTITY_NAME: "site-3", "custom": 5}

    def test_custom_props(self):
        ctx = FLContext()
        assert ctx.get_custom_prop("a") is None
        assert ctx.get_custom_prop("a", 1) == 1
        ctx.set_custom_prop("a", 2)
        ctx.set_custom_prop("b", 3)
        assert ctx.get_custom_prop("a") == 2
        assert ctx.get_prop(ReservedKey.CUSTOM_PROPS) == {"a": 2, "b": 3}

    def test_job_unsafe(self):
        ctx = FLContext()
        assert ctx.is_job_unsafe() is False
        ctx.set_job_is_unsafe()
        assert ctx.is_job_unsafe() is True

    def test_context_manager(self):
        ctx = _ctx()
        with ctx as c:
            assert c is ctx
            c.set_prop("x", 1, private=True, sticky=False)
        assert ctx.get_prop("x") == 1

    def test_context_manager_does_not_swallow_errors(self):
        with pytest.raises(KeyError):
            with _ctx():
                raise KeyError("boom")


# ================================================================================================ fl_component.py


class _PlainComponent(FLComponent):
    pass


class _Forgetful(FLComponent):
    def __init__(self) -> None:  # does not call super().__init__()
        self.x = 1


class TestFLComponent:
    def test_name_is_class_name(self):
        c = _PlainComponent()
        assert c.name == "_PlainComponent"
        assert FLComponent().name == "FLComponent"

    def test_log_info_prefix(self, caplog):
        c = _PlainComponent()
        ctx = _ctx("site-1", "job1")
        with caplog.at_level(logging.DEBUG):
            c.log_info(ctx, "hello world")
        recs = [r for r in caplog.records if "hello world" in r.getMessage()]
        assert len(recs) == 1
        msg = recs[0].getMessage()
        assert msg.startswith("[identity=site-1, run=job1]")
        assert msg.endswith("hello world")
        assert recs[0].levelno == logging.INFO

    def test_log_prefix_with_peer(self, caplog):
        c = _PlainComponent()
        ctx = _ctx("server", "job1")
        peer = peer_context_from_props({ReservedKey.IDENTITY_NAME: "site-2", ReservedKey.RUN_NUM: "job1"})
        ctx.set_peer_context(peer)
        with caplog.at_level(logging.DEBUG):
            c.log_info(ctx, "from peer")
        msg = next(r.getMessage() for r in caplog.records if "from peer" in r.getMessage())
        assert msg.startswith("[identity=server, run=job1, peer=site-2, peer_run=job1")
        assert "peer=site-2" in msg and "peer_run=job1" in msg

    def test_log_prefix_with_task(self, caplog):
        c = _PlainComponent()
        ctx = _ctx("site-1", "job1")
        ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
        ctx.set_prop(FLContextKey.TASK_ID, "tid-1", private=True, sticky=False)
        with caplog.at_level(logging.DEBUG):
            c.log_info(ctx, "in task")
        msg = next(r.getMessage() for r in caplog.records if "in task" in r.getMessage())
        assert "task_name=train" in msg and "task_id=tid-1" in msg

    def test_log_prefix_question_mark_for_empty_values(self, caplog):
        c = _PlainComponent()
        ctx = FLContextManager(identity_name="site-1").new_context()  # job_id defaults to ""
        ctx.set_peer_context(peer_context_from_props({ReservedKey.RUN_NUM: ""}))
        with caplog.at_level(logging.DEBUG):
            c.log_info(ctx, "anon")
        msg = next(r.getMessage() for r in caplog.records if "anon" in r.getMessage())
        assert msg.startswith("[identity=site-1, run=?, peer=?, peer_run=?]")

    def test_log_levels(self, caplog):
        c = _PlainComponent()
        ctx = _ctx()
        with caplog.at_level(logging.DEBUG):
            c.log_debug(ctx, "m-debug")
            c.log_info(ctx, "m-info")
            c.log_warning(ctx, "m-warning")
            c.log_error(ctx, "m-error")
            c.log_critical(ctx, "m-critical")
        levels = {r.getMessage().rsplit(" ", 1)[-1]: r.levelno for r in caplog.records if "m-" in r.getMessage()}
        assert levels == {
            "m-debug": logging.DEBUG,
            "m-info": logging.INFO,
            "m-warning": logging.WARNING,
            "m-error": logging.ERROR,
            "m-critical": logging.CRITICAL,
        }

    def test_log_fire_event_defaults(self):
        expected = {
            "log_info": False,
            "log_warning": True,
            "log_error": True,
            "log_debug": False,
            "log_critical": True,
            "log_exception": False,
        }
        for meth, default in expected.items():
            assert inspect.signature(getattr(FLComponent, meth)).parameters["fire_event"].default is default, meth

    def test_log_info_fires_no_event_by_default(self):
        engine = _FakeEngine()
        c = _PlainComponent()
        c.log_info(_ctx(engine=engine), "quiet")
        c.log_debug(_ctx(engine=engine), "quiet")
        assert engine.events == []

    def test_log_with_fire_event_fires_log_events(self):
        engine = _FakeEngine()
        c = _PlainComponent()
        ctx = _ctx(engine=engine)
        c.log_warning(ctx, "w")
        c.log_error(ctx, "e")
        c.log_critical(ctx, "c")
        c.log_info(ctx, "i", fire_event=True)
        assert engine.events == [
            EventType.WARNING_LOG_AVAILABLE,
            EventType.ERROR_LOG_AVAILABLE,
            EventType.CRITICAL_LOG_AVAILABLE,
            EventType.INFO_LOG_AVAILABLE,
        ]

    def test_log_exception_includes_traceback(self, caplog):
        c = _PlainComponent()
        ctx = _ctx()
        with caplog.at_level(logging.DEBUG):
            try:
                raise ValueError("kaboom-123")
            except ValueError:
                c.log_exception(ctx, "it failed")
        recs = [r for r in caplog.records if "it failed" in r.getMessage()]
        assert len(recs) == 1
        assert recs[0].levelno == logging.ERROR
        assert recs[0].exc_info is not None and recs[0].exc_info[0] is ValueError
        assert recs[0].getMessage().startswith("[identity=site-1, run=job1]")
        assert "Traceback" in caplog.text
        assert "ValueError: kaboom-123" in caplog.text

    def test_log_without_context(self, caplog):
        c = _PlainComponent()
        with caplog.at_level(logging.DEBUG):
            c.log_info(None, "no ctx")
        assert any(r.getMessage().endswith("no ctx") for r in caplog.records)

    def test_subclass_without_super_init(self, caplog):
        f = _Forgetful()
        assert f.name == "_Forgetful"
        with caplog.at_level(logging.DEBUG):
            f.log_info(_ctx(), "still logs")
            f.log_error(_ctx(), "errors too")
        msgs = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("[identity=site-1, run=job1]") and m.endswith("still logs") for m in msgs)
        assert any(m.endswith("errors too") for m in msgs)
        seen = []
        f.register_event_handler(EventType.START_RUN, lambda et, ctx, **kw: seen.append(et))
        f._dispatch_event(EventType.START_RUN, _ctx())
        assert seen == [EventType.START_RUN]

    def test_register_event_handler(self):
        calls = []

        class Comp(FLComponent):
            def handle_event(self, event_type, fl_ctx):
                calls.append(("handle_event", event_type))

        def handler(et, fl_ctx, **kwargs):
            calls.append(("handler", et, fl_ctx.get_identity_name(), kwargs))

        c = Comp()
        c.register_event_handler([EventType.START_RUN, EventType.END_RUN], handler, round=3, tag="x")
        c.register_event_handler(EventType.ABORT_TASK, handler)
        assert set(c.get_event_handlers()) == {EventType.START_RUN, EventType.END_RUN, EventType.ABORT_TASK}
        ctx = _ctx()
        c._dispatch_event(EventType.START_RUN, ctx)
        c._dispatch_event(EventType.ABORT_TASK, ctx)
        c._dispatch_event(EventType.SYSTEM_START, ctx)
        assert calls == [
            ("handle_event", EventType.START_RUN),
            ("handler", EventType.START_RUN, "site-1", {"round": 3, "tag": "x"}),
            ("handle_event", EventType.ABORT_TASK),
            ("handler", EventType.ABORT_TASK, "site-1", {}),
            ("handle_event", EventType.SYSTEM_START),
        ]

    def test_register_event_handler_rejects_non_callable(self):
        with pytest.raises((TypeError, ValueError)):
            _PlainComponent().register_event_handler(EventType.START_RUN, "not callable")

    def test_fire_event_goes_through_engine(self):
        engine = _FakeEngine()
        c = _PlainComponent()
        ctx = _ctx(engine=engine)
        c.fire_event(EventType.START_WORKFLOW, ctx)
        assert engine.events == [EventType.START_WORKFLOW]
        assert ctx.get_prop(FLContextKey.EVENT_ORIGIN) == "_PlainComponent"
        c.fire_event_with_data("_custom_event", ctx, "my_key", {"d": 1})
        assert engine.events[-1] == "_custom_event"
        assert ctx.get_prop("my_key") == {"d": 1}

    def test_system_panic(self):
        engine = _FakeEngine()
        ctx = _ctx(engine=engine)
        _PlainComponent().system_panic("disk on fire", ctx)
        assert EventType.FATAL_SYSTEM_ERROR in engine.events
        assert ctx.get_prop(FLContextKey.EVENT_DATA) == "disk on fire"

    def test_no_task_panic(self):
        assert not hasattr(FLComponent, "task_panic")  # removed in NVFlare 2.4


# ================================================================================================ controller_spec.py


class TestTask:
    def test_task_sets_task_name_header(self):
        data = Shareable()
        t = Task("train", data)
        assert t.data is data
        assert data.get_header(ReservedHeaderKey.TASK_NAME) == "train"
        assert t.name == "train"
        assert t.timeout == 0
        assert t.props == {}
        assert t.targets is None
        assert t.client_tasks == []
        assert t.last_client_task_map == {}
        assert t.completion_status is None
        assert t.is_standing is False
        assert t.schedule_time is None
        assert isinstance(t.create_time, float)

    def test_empty_name(self):
        with pytest.raises(ValueError):
            Task("", Shareable())

    @pytest.mark.parametrize("data", [{}, None, "x", DXO(DataKind.WEIGHTS, {})])
    def test_data_must_be_shareable(self, data):
        with pytest.raises(TypeError):
            Task("t", data)

    @pytest.mark.parametrize("timeout", [-1, -0.5])
    def test_negative_timeout(self, timeout):
        with pytest.raises(ValueError):
            Task("t", Shareable(), timeout=timeout)

    @pytest.mark.parametrize("cb", ["before_task_sent_cb", "after_task_sent_cb", "result_received_cb", "task_done_cb"])
    def test_non_callable_callbacks(self, cb):
        with pytest.raises(TypeError):
            Task("t", Shareable(), **{cb: "not callable"})
        Task("t", Shareable(), **{cb: lambda *a: None})  # a callable is fine

    def test_non_numeric_timeout_is_type_error(self):
        with pytest.raises(TypeError):
            Task("t", Shareable(), timeout="10")  # type: ignore[arg-type]

    def test_non_str_name_is_type_error(self):
        with pytest.raises(TypeError):
            Task(5, Shareable())  # type: ignore[arg-type]

    def test_props(self):
        t = Task("t", Shareable(), props={"a": 1})
        assert t.get_prop("a") == 1
        t.set_prop("b", 2)
        assert t.get_prop("b") == 2
        assert t.get_prop("none") is None
        with pytest.raises(ValueError):
            t.set_prop("__reserved", 1)
        with pytest.raises(TypeError):
            Task("t", Shareable(), props=[("a", 1)])  # type: ignore[arg-type]

    def test_client_task_fields(self):
        t = Task("t", Shareable())
        client = Client("site-1", "tok")
        ct = ClientTask(client, t)
        assert ct.client is client
        assert ct.task is t
        assert isinstance(ct.id, str) and len(ct.id) == 36
        assert ClientTask(client, t).id != ct.id
        assert ct.task_send_count == 0
        assert ct.task_sent_time is None
        assert ct.result_received_time is None
        assert ct.result is None
        assert ct.props == {}

    def test_client(self):
        c = Client("site-1", "tok")
        assert c.name == "site-1" and c.token == "tok"
        assert isinstance(c.last_connect_time, float)
        c.set_prop("p", 1)
        assert c.get_prop("p") == 1
        assert c.get_fqsn() == "site-1"
        assert c.get_is_leaf() is True
        assert c.to_dict()["name"] == "site-1"

    def test_enums(self):
        assert {s.name: s.value for s in TaskCompletionStatus} == {
            "OK": "ok",
            "TIMEOUT": "timeout",
            "ERROR": "error",
            "CANCELLED": "cancelled",
            "ABORTED": "aborted",
            "IGNORED": "ignored",
            "CLIENT_DEAD": "client_dead",
        }
        assert {s.name: s.value for s in SendOrder} == {"ANY": "any", "SEQUENTIAL": "sequential"}
        assert issubclass(TaskCompletionStatus, Enum) and issubclass(SendOrder, Enum)
        assert OperatorMethod.BROADCAST == "bcast"
        assert OperatorMethod.RELAY == "relay"
        assert hasattr(controller_spec, "TaskOperatorKey")

    def test_controller_spec_abstract_methods(self):
        abstract = controller_spec.ControllerSpec.__abstractmethods__
        assert {"start_controller", "control_flow", "stop_controller"} <= abstract
        assert callable(controller_spec.ControllerSpec.process_result_of_unknown_task)


# ================================================================================================ impl/controller.py


class _RecordingComm(WFCommSpec):
    """A WFCommSpec that records each call with its arguments bound by name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def _rec(self, name: str, **kwargs) -> None:
        self.calls.append((name, kwargs))

    def broadcast(self, task, fl_ctx, targets=None, min_responses=1, wait_time_after_min_received=0):
        self._rec(
            "broadcast",
            task=task,
            fl_ctx=fl_ctx,
            targets=targets,
            min_responses=min_responses,
            wait_time_after_min_received=wait_time_after_min_received,
        )

    def send(self, task, fl_ctx, targets=None, send_order=SendOrder.SEQUENTIAL, task_assignment_timeout=0):
        self._rec(
            "send",
            task=task,
            fl_ctx=fl_ctx,
            targets=targets,
            send_order=send_order,
            task_assignment_timeout=task_assignment_timeout,
        )

    def relay(
        self,
        task,
        fl_ctx,
        targets=None,
        send_order=SendOrder.SEQUENTIAL,
        task_assignment_timeout=0,
        task_result_timeout=0,
        dynamic_targets=True,
    ):
        self._rec(
            "relay",
            task=task,
            fl_ctx=fl_ctx,
            targets=targets,
            send_order=send_order,
            task_assignment_timeout=task_assignment_timeout,
            task_result_timeout=task_result_timeout,
            dynamic_targets=dynamic_targets,
        )

    def wait_for_task(self, task, abort_signal):
        self._rec("wait_for_task", task=task, abort_signal=abort_signal)

    def cancel_task(self, task, completion_status=TaskCompletionStatus.CANCELLED, fl_ctx=None):
        self._rec("cancel_task", task=task, completion_status=completion_status, fl_ctx=fl_ctx)

    def cancel_all_tasks(self, completion_status=TaskCompletionStatus.CANCELLED, fl_ctx=None):
        self._rec("cancel_all_tasks", completion_status=completion_status, fl_ctx=fl_ctx)

    def get_num_standing_tasks(self):
        self._rec("get_num_standing_tasks")
        return 7

    def get_client_disconnect_time(self, client_name):
        self._rec("get_client_disconnect_time", client_name=client_name)
        return 12.5


class _OnlyFlow(Controller):
    def control_flow(self, abort_signal, fl_ctx):
        pass


def _defaults(func) -> dict:
    return {
        n: p.default for n, p in inspect.signature(func).parameters.items() if p.default is not inspect.Parameter.empty
    }


class TestController:
    def test_subclass_with_only_control_flow(self):
        c = _OnlyFlow()
        assert isinstance(c, FLComponent)
        assert isinstance(c, controller_spec.ControllerSpec)
        assert c.name == "_OnlyFlow"
        assert c.task_check_period == 0.2
        c.start_controller(_ctx())
        c.stop_controller(_ctx())
        assert _OnlyFlow(task_check_period=0.5).task_check_period == 0.5

    def test_controller_without_control_flow_is_abstract(self):
        class NoFlow(Controller):
            pass

        with pytest.raises(TypeError):
            NoFlow()

    def test_documented_defaults(self):
        assert _defaults(Controller.broadcast) == {
            "targets": None,
            "min_responses": 1,
            "wait_time_after_min_received": 0,
        }
        assert _defaults(Controller.broadcast_and_wait) == {
            "targets": None,
            "min_responses": 1,
            "wait_time_after_min_received": 0,
            "abort_signal": None,
        }
        assert _defaults(Controller.broadcast_forever) == {"targets": None}
        assert _defaults(Controller.send) == {
            "targets": None,
            "send_order": SendOrder.SEQUENTIAL,
            "task_assignment_timeout": 0,
        }
        assert _defaults(Controller.send_and_wait) == {
            "targets": None,
            "send_order": SendOrder.SEQUENTIAL,
            "task_assignment_timeout": 0,
            "abort_signal": None,
        }
        assert _defaults(Controller.relay) == {
            "targets": None,
            "send_order": SendOrder.SEQUENTIAL,
            "task_assignment_timeout": 0,
            "task_result_timeout": 0,
            "dynamic_targets": True,
        }
        assert _defaults(Controller.relay_and_wait) == {
            "targets": None,
            "send_order": SendOrder.SEQUENTIAL,
            "task_assignment_timeout": 0,
            "task_result_timeout": 0,
            "dynamic_targets": True,
            "abort_signal": None,
        }
        assert _defaults(Controller.cancel_task) == {
            "completion_status": TaskCompletionStatus.CANCELLED,
            "fl_ctx": None,
        }
        assert _defaults(Controller.cancel_all_tasks) == {
            "completion_status": TaskCompletionStatus.CANCELLED,
            "fl_ctx": None,
        }
        assert _defaults(Controller.__init__) == {"task_check_period": 0.2}
        for name in ("broadcast", "broadcast_and_wait", "send", "send_and_wait", "relay", "relay_and_wait"):
            params = list(inspect.signature(getattr(Controller, name)).parameters)
            assert params[:4] == ["self", "task", "fl_ctx", "targets"], name

    @pytest.mark.parametrize(
        "call",
        [
            lambda c, t, ctx: c.broadcast(t, ctx),
            lambda c, t, ctx: c.broadcast_and_wait(t, ctx),
            lambda c, t, ctx: c.broadcast_forever(t, ctx),
            lambda c, t, ctx: c.send(t, ctx, targets=["site-1"]),
            lambda c, t, ctx: c.send_and_wait(t, ctx, targets=["site-1"]),
            lambda c, t, ctx: c.relay(t, ctx),
            lambda c, t, ctx: c.relay_and_wait(t, ctx),
            lambda c, t, ctx: c.get_num_standing_tasks(),
            lambda c, t, ctx: c.cancel_task(t),
            lambda c, t, ctx: c.cancel_all_tasks(),
        ],
        ids=[
            "broadcast",
            "broadcast_and_wait",
            "broadcast_forever",
            "send",
            "send_and_wait",
            "relay",
            "relay_and_wait",
            "get_num_standing_tasks",
            "cancel_task",
            "cancel_all_tasks",
        ],
    )
    def test_task_methods_before_run_raise_runtime_error(self, call):
        c = _OnlyFlow()
        with pytest.raises(RuntimeError) as ei:
            call(c, Task("t", Shareable()), _ctx("server"))
        msg = str(ei.value)
        assert "_OnlyFlow" in msg  # names the controller
        assert "run" in msg  # says why: not running yet

    @pytest.mark.parametrize("targets", ["site-1", ("site-1",), {"site-1"}, 3])
    def test_targets_must_be_a_list(self, targets):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        t = Task("t", Shareable())
        ctx = _ctx("server")
        for call in (
            lambda: c.broadcast(t, ctx, targets=targets),
            lambda: c.broadcast_and_wait(t, ctx, targets=targets),
            lambda: c.broadcast_forever(t, ctx, targets=targets),
            lambda: c.send(t, ctx, targets=targets),
            lambda: c.send_and_wait(t, ctx, targets=targets),
            lambda: c.relay(t, ctx, targets=targets),
            lambda: c.relay_and_wait(t, ctx, targets=targets),
        ):
            with pytest.raises(TypeError, match="targets"):
                call()
        assert comm.calls == []  # nothing reached the communicator

    def test_broadcast_and_wait_delegates(self):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        assert c.communicator is comm
        t = Task("t", Shareable())
        ctx = _ctx("server")
        sig = Signal()
        assert c.broadcast_and_wait(t, ctx, targets=["site-1", "site-2"], abort_signal=sig) is None
        assert comm.calls == [
            (
                "broadcast",
                dict(task=t, fl_ctx=ctx, targets=["site-1", "site-2"], min_responses=1, wait_time_after_min_received=0),
            ),
            ("wait_for_task", dict(task=t, abort_signal=sig)),
        ]

    def test_broadcast_and_wait_passes_explicit_args(self):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        t = Task("t", Shareable())
        ctx = _ctx("server")
        c.broadcast_and_wait(t, ctx, None, 0, 5)
        assert comm.calls == [
            ("broadcast", dict(task=t, fl_ctx=ctx, targets=None, min_responses=0, wait_time_after_min_received=5)),
            ("wait_for_task", dict(task=t, abort_signal=None)),
        ]

    def test_broadcast_without_wait(self):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        t = Task("t", Shareable())
        ctx = _ctx("server")
        assert c.broadcast(t, ctx) is None
        assert comm.calls == [
            ("broadcast", dict(task=t, fl_ctx=ctx, targets=None, min_responses=1, wait_time_after_min_received=0))
        ]

    def test_broadcast_forever_delegates_a_broadcast(self):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        t = Task("t", Shareable())
        ctx = _ctx("server")
        c.broadcast_forever(t, ctx, targets=["site-1"])
        assert [name for name, _ in comm.calls] == ["broadcast"]
        args = comm.calls[0][1]
        assert args["task"] is t and args["targets"] == ["site-1"]

    def test_send_and_wait_delegates(self):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        t = Task("t", Shareable())
        ctx = _ctx("server")
        assert c.send_and_wait(t, ctx, targets=["site-2"], send_order=SendOrder.ANY, task_assignment_timeout=3) is None
        assert comm.calls == [
            ("send", dict(task=t, fl_ctx=ctx, targets=["site-2"], send_order=SendOrder.ANY, task_assignment_timeout=3)),
            ("wait_for_task", dict(task=t, abort_signal=None)),
        ]

    def test_relay_and_wait_delegates(self):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        t = Task("t", Shareable())
        ctx = _ctx("server")
        sig = Signal()
        assert c.relay_and_wait(t, ctx, abort_signal=sig) is None
        assert comm.calls == [
            (
                "relay",
                dict(
                    task=t,
                    fl_ctx=ctx,
                    targets=None,
                    send_order=SendOrder.SEQUENTIAL,
                    task_assignment_timeout=0,
                    task_result_timeout=0,
                    dynamic_targets=True,
                ),
            ),
            ("wait_for_task", dict(task=t, abort_signal=sig)),
        ]

    def test_other_methods_delegate(self):
        c = _OnlyFlow()
        comm = _RecordingComm()
        c.set_communicator(comm)
        t = Task("t", Shareable())
        assert c.get_num_standing_tasks() == 7
        assert c.get_client_disconnect_time("site-1") == 12.5
        c.cancel_task(t)
        c.cancel_all_tasks(TaskCompletionStatus.ABORTED)
        assert comm.calls == [
            ("get_num_standing_tasks", {}),
            ("get_client_disconnect_time", {"client_name": "site-1"}),
            ("cancel_task", {"task": t, "completion_status": TaskCompletionStatus.CANCELLED, "fl_ctx": None}),
            ("cancel_all_tasks", {"completion_status": TaskCompletionStatus.ABORTED, "fl_ctx": None}),
        ]

    def test_add_to_fed_job(self):
        added = []

        class Job:
            def add_controller(self, obj, ctx=None, **kwargs):
                added.append((obj, ctx, kwargs))
                return "ctrl-id"

        c = _OnlyFlow()
        assert c.add_to_fed_job(Job(), "the-ctx") == "ctrl-id"
        assert added == [(c, "the-ctx", {})]


# ================================================================================================ executor.py


class _Exec(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        return make_reply(ReturnCode.OK)


class _FakeJob:
    def __init__(self) -> None:
        self.executors: list[tuple] = []

    def add_executor(self, obj, tasks=None, ctx=None):
        self.executors.append((obj, tasks, ctx))
        return "exec-id"


class TestExecutor:
    def test_executor_is_abstract(self):
        with pytest.raises(TypeError):
            Executor()

        class NoExecute(Executor):
            pass

        with pytest.raises(TypeError):
            NoExecute()

    def test_concrete_executor(self):
        e = _Exec()
        assert isinstance(e, FLComponent)
        assert e.unsafe is False
        assert e.name == "_Exec"
        assert e.get_job_target_type() == SiteType.CLIENT == "client"
        out = e.execute("train", Shareable(), _ctx(), Signal())
        assert out.get_return_code() == ReturnCode.OK
        params = list(inspect.signature(Executor.execute).parameters)
        assert params == ["self", "task_name", "shareable", "fl_ctx", "abort_signal"]

    def test_add_to_fed_job_default_tasks(self):
        job = _FakeJob()
        e = _Exec()
        e.add_to_fed_job(job, "ctx")
        assert job.executors == [(e, ["*"], "ctx")]

    def test_add_to_fed_job_with_tasks(self):
        job = _FakeJob()
        e = _Exec()
        e.add_to_fed_job(job, "ctx", tasks=["train", "validate"])
        assert job.executors == [(e, ["train", "validate"], "ctx")]

    def test_add_to_fed_job_rejects_unknown_kwargs(self):
        job = _FakeJob()
        with pytest.raises(TypeError, match="bogus"):
            _Exec().add_to_fed_job(job, "ctx", tasks=["train"], bogus=1)
        assert job.executors == []


# ================================================================================================ top-level re-exports

REEXPORTS = {
    "FedJob": ("flarelite.job_config.api", "FedJob"),
    "Controller": (controller_mod, "Controller"),
    "Executor": (executor, "Executor"),
    "Task": (controller_spec, "Task"),
    "ClientTask": (controller_spec, "ClientTask"),
    "SendOrder": (controller_spec, "SendOrder"),
    "TaskCompletionStatus": (controller_spec, "TaskCompletionStatus"),
    "Shareable": (shareable_mod, "Shareable"),
    "make_reply": (shareable_mod, "make_reply"),
    "make_copy": (shareable_mod, "make_copy"),
    "DXO": (dxo, "DXO"),
    "DataKind": (dxo, "DataKind"),
    "MetaKey": (dxo, "MetaKey"),
    "from_shareable": (dxo, "from_shareable"),
    "ReturnCode": (fl_constant, "ReturnCode"),
    "ReservedKey": (fl_constant, "ReservedKey"),
    "FLContextKey": (fl_constant, "FLContextKey"),
    "SiteType": (fl_constant, "SiteType"),
    "EventType": (event_type, "EventType"),
    "FLContext": (fl_context, "FLContext"),
    "FLComponent": (fl_component, "FLComponent"),
    "Signal": (signal, "Signal"),
}


class TestTopLevel:
    @pytest.mark.parametrize("name", sorted(REEXPORTS))
    def test_reexport_is_the_module_object(self, name):
        import importlib

        module, attr = REEXPORTS[name]
        if isinstance(module, str):
            module = importlib.import_module(module)
        assert getattr(flarelite, name) is getattr(module, attr)
        assert name in flarelite.__all__

    def test_all_names_resolve(self):
        assert len(flarelite.__all__) == len(set(flarelite.__all__))
        for name in flarelite.__all__:
            assert hasattr(flarelite, name), name


def test_signal_wait_wakes_when_an_ancestor_triggers():
    import threading

    from flarelite.apis.signal import Signal

    run = Signal()
    task = Signal(parent=run)
    step = Signal(parent=task)
    timer = threading.Timer(0.05, run.trigger, args=("abort",))
    timer.start()
    assert step.wait(5) is True  # woken by the run's abort, well before the timeout
    timer.join()
    assert Signal(parent=run).wait(0) is True  # a child made after the trigger reads as triggered at once
