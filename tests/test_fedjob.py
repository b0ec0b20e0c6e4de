"""FedJob: exported layout and configs, argument recording, custom/ code, errors, and one simulator run."""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flarelite.errors import ConfigError
from flarelite.job_config import FedJob, models
from flarelite.job_config.exporter import ModuleCollector, snake_id

FIXTURES = str(Path(__file__).parent / "fedjob_fixtures")


@pytest.fixture(scope="module")
def m() -> Iterator[ModuleType]:
    """The fixture components, imported as top-level module ``p2p_modules`` (not as a package member)."""
    added = FIXTURES not in sys.path
    if added:
        sys.path.insert(0, FIXTURES)
    module = importlib.import_module("p2p_modules")
    assert module.__name__ == "p2p_modules"
    yield module
    if added and FIXTURES in sys.path:
        sys.path.remove(FIXTURES)


def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def custom_files(app_dir: Path) -> set[str]:
    custom = app_dir / "custom"
    return {p.relative_to(custom).as_posix() for p in custom.rglob("*") if p.is_file()}


LOCAL_CODE = {
    "p2p_modules.py",
    "helpers_mod.py",
    "fixpkg/__init__.py",
    "fixpkg/shared.py",
    "fixpkg/sub/__init__.py",
    "fixpkg/sub/leaf.py",
    "fixpkg/sub/sibling.py",
}


# --- layout ---------------------------------------------------------------------------------------------
def test_server_and_clients_export_one_app_for_all(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="hello", min_clients=2)
    assert job.to_server(m.HelloController()) == "controller"
    assert job.to_clients(m.HelloExecutor()) == "executor"
    job_dir = Path(job.export_job(str(tmp_path)))

    assert job_dir == tmp_path / "hello"
    assert sorted(p.name for p in job_dir.iterdir()) == ["app", "meta.json"]
    assert read(job_dir / "meta.json") == {
        "name": "hello",
        "resource_spec": {},
        "min_clients": 2,
        "deploy_map": {"app": ["@ALL"]},
    }
    assert read(job_dir / "app/config/config_fed_server.json") == {
        "format_version": 2,
        "workflows": [{"id": "controller", "path": "p2p_modules.HelloController", "args": {}}],
        "components": [],
        "task_data_filters": [],
        "task_result_filters": [],
    }
    assert read(job_dir / "app/config/config_fed_client.json") == {
        "format_version": 2,
        "executors": [{"tasks": ["*"], "executor": {"path": "p2p_modules.HelloExecutor", "args": {}}}],
        "components": [],
        "task_data_filters": [],
        "task_result_filters": [],
    }
    job_def = models.load_job(str(job_dir))
    assert job_def.app_for("site-7").name == "app"
    assert job_def.app_for("server").server is not None


def test_per_site_targets_export_app_server_and_one_app_per_site(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="p2p", min_clients=2)
    job.to_server(m.HelloController())
    for i in (1, 2):
        assert job.to(m.HelloExecutor(greeting_prefix=f"s{i}"), f"site-{i}", tasks=["hello"]) == "executor"
    job_dir = Path(job.export_job(str(tmp_path)))

    assert sorted(p.name for p in job_dir.iterdir()) == ["app_server", "app_site-1", "app_site-2", "meta.json"]
    assert read(job_dir / "meta.json")["deploy_map"] == {
        "app_server": ["server"],
        "app_site-1": ["site-1"],
        "app_site-2": ["site-2"],
    }
    assert os.listdir(job_dir / "app_server/config") == ["config_fed_server.json"]
    for i in (1, 2):
        config_dir = job_dir / f"app_site-{i}/config"
        assert os.listdir(config_dir) == ["config_fed_client.json"]
        assert read(config_dir / "config_fed_client.json")["executors"] == [
            {
                "tasks": ["hello"],
                "executor": {"path": "p2p_modules.HelloExecutor", "args": {"greeting_prefix": f"s{i}"}},
            }
        ]
    job_def = models.load_job(str(job_dir))
    assert job_def.named_clients() == ["site-1", "site-2"]
    assert job_def.app_for("site-2").name == "app_site-2"


def test_to_clients_mixed_with_a_site_target(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="mixed")
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor(), tasks=["hello"])
    assert job.to(m.Holder(value=1), "site-2") == "holder"
    job_dir = Path(job.export_job(str(tmp_path)))
    assert read(job_dir / "meta.json")["deploy_map"] == {"app": ["@ALL"], "app_site-2": ["site-2"]}
    site2 = read(job_dir / "app_site-2/config/config_fed_client.json")
    assert [e["executor"]["path"] for e in site2["executors"]] == ["p2p_modules.HelloExecutor"]
    assert site2["components"] == [{"id": "holder", "path": "p2p_modules.Holder", "args": {"value": 1}}]
    assert not (job_dir / "app_site-2/config/config_fed_server.json").exists()
    job_def = models.load_job(str(job_dir))
    assert job_def.app_for("site-1").name == "app"
    assert job_def.app_for("site-2").name == "app_site-2"


def test_meta_props_mandatory_clients_and_fail_fast(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="meta", min_clients=2, mandatory_clients=["site-1"], meta_props={"owner": "me"}, fail_fast=True)
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    job.to_server({"max_rounds": 3})
    job_dir = Path(job.export_job(str(tmp_path)))
    meta = read(job_dir / "meta.json")
    assert meta["mandatory_clients"] == ["site-1"]
    assert meta["owner"] == "me"
    server = read(job_dir / "app/config/config_fed_server.json")
    assert server["dead_client_grace_period"] == 0
    assert server["max_rounds"] == 3
    models.load_job(str(job_dir))


def test_export_replaces_an_earlier_export(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="again")
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    job.export_job(str(tmp_path))
    (tmp_path / "again/app/custom/stale.py").write_text("x = 1\n")
    job.export_job(str(tmp_path))
    assert not (tmp_path / "again/app/custom/stale.py").exists()


def test_export_refuses_to_replace_a_folder_that_is_not_a_job(m: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious/data.txt").write_text("keep me")
    job = FedJob(name="precious")
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    with pytest.raises(ConfigError, match="is not a job folder"):
        job.export_job(str(tmp_path))
    assert (tmp_path / "precious/data.txt").read_text() == "keep me"


# --- recording arguments ----------------------------------------------------------------------------------
def test_only_non_default_args_are_recorded_from_x_or_underscore_x(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.HelloController(rounds=3, note="from _note", task_check_period=0.5))
    job.to_clients(m.HelloExecutor(greeting_prefix="hi", options={"a": [1, 2], "b": None}))
    job_dir = Path(job.export_job(str(tmp_path)))
    workflow = read(job_dir / "app/config/config_fed_server.json")["workflows"][0]
    assert workflow["args"] == {"rounds": 3, "note": "from _note", "task_check_period": 0.5}
    executor = read(job_dir / "app/config/config_fed_client.json")["executors"][0]["executor"]
    assert executor["args"] == {"options": {"a": [1, 2], "b": None}}  # greeting_prefix is the default


def test_nested_components_are_recorded_as_path_and_args(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.HelloController())
    job.to_clients(m.ModelExecutor(m.Model(width=8), lr=0.5, shape=(3, 4)))
    job_dir = Path(job.export_job(str(tmp_path)))
    executor = read(job_dir / "app/config/config_fed_client.json")["executors"][0]["executor"]
    assert executor == {
        "path": "p2p_modules.ModelExecutor",
        "args": {"model": {"path": "p2p_modules.Model", "args": {"width": 8}}, "lr": 0.5, "shape": [3, 4]},
    }
    models.load_job(str(job_dir))


def test_base_parameters_are_recorded_when_init_forwards_kwargs(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.Forwarding(extra=2, rounds=5))
    job.to_clients(m.HelloExecutor())
    job_dir = Path(job.export_job(str(tmp_path)))
    workflow = read(job_dir / "app/config/config_fed_server.json")["workflows"][0]
    assert workflow["args"] == {"extra": 2, "rounds": 5}


def test_flcomponent_name_is_not_mistaken_for_a_name_argument(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.HelloController())
    job.to_server(m.Named())
    job.to_clients(m.HelloExecutor())
    job_dir = Path(job.export_job(str(tmp_path)))
    components = read(job_dir / "app/config/config_fed_server.json")["components"]
    assert components == [{"id": "named", "path": "p2p_modules.Named", "args": {}}]


def test_required_argument_not_stored_is_an_error_naming_class_and_parameter(m: ModuleType) -> None:
    job = FedJob()
    with pytest.raises(ConfigError) as info:
        job.to_server(m.Forgetful(size=3))
    text = str(info.value)
    assert "Forgetful" in text and "'size'" in text and "self.size or self._size" in text
    with pytest.raises(ConfigError, match="Forgetful"):
        job.to_clients(m.ModelExecutor(m.Forgetful(size=3)))  # nested too
    with pytest.raises(ConfigError, match="Forgetful"):
        job.to(m.Forgetful(size=3), "site-3")
    assert job.clients == []  # a failed to() leaves no empty app (so no per-site target) behind


@pytest.mark.parametrize(
    "value, type_name",
    [
        (threading.Lock(), "lock"),
        ({1, 2}, "set"),
        (Path("/tmp"), "Path"),
        (b"raw", "bytes"),
        (print, "builtin_function"),
    ],
)
def test_non_json_argument_is_an_error_naming_class_parameter_and_type(
    m: ModuleType, value: Any, type_name: str
) -> None:
    job = FedJob()
    with pytest.raises(ConfigError) as info:
        job.to_server(m.Holder(value=value))
    text = str(info.value)
    assert "Holder" in text and "'value'" in text and type_name in text


def test_numpy_array_argument_suggests_tolist(m: ModuleType) -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(ConfigError, match=r"numpy.ndarray.*tolist"):
        FedJob().to_server(m.Holder(value=np.zeros(3)))
    # numpy scalars are plain numbers
    assert FedJob().to_server(m.Holder(value=np.int64(4))) == "holder"


def test_non_str_dict_keys_and_spec_like_dicts_are_errors(m: ModuleType) -> None:
    with pytest.raises(ConfigError, match="dict keys must be str"):
        FedJob().to_server(m.Holder(value={1: "a"}))
    with pytest.raises(ConfigError, match="looks like a component spec"):
        FedJob().to_server(m.Holder(value={"path": "/data/train"}))


def test_class_defined_in_main_is_an_error(m: ModuleType) -> None:
    class Script(m.Holder):  # type: ignore[name-defined]
        pass

    Script.__module__ = "__main__"
    Script.__qualname__ = "Script"
    with pytest.raises(ConfigError) as info:
        FedJob().to_server(Script())
    text = str(info.value)
    assert "class Script is defined in __main__ (your script or a notebook cell)" in text
    assert "move it to a module file (e.g. modules.py next to your script) and import it from there" in text


def test_class_defined_in_a_function_is_an_error(m: ModuleType) -> None:
    class Local(m.Holder):  # type: ignore[name-defined]
        pass

    with pytest.raises(
        ConfigError, match=r"class Local is defined inside a function .*<locals>.*top level of a module"
    ):
        FedJob().to_clients(Local())


# --- targets and ids --------------------------------------------------------------------------------------
def test_executor_to_server_and_controller_to_clients_are_rejected(m: ModuleType) -> None:
    job = FedJob()
    with pytest.raises(TypeError, match="HelloExecutor is an Executor.*to_clients"):
        job.to_server(m.HelloExecutor())
    with pytest.raises(TypeError, match="only run on client sites"):
        job.to(m.HelloExecutor(), "server")
    with pytest.raises(TypeError, match="HelloController is a Controller.*to_server"):
        job.to_clients(m.HelloController())


@pytest.mark.parametrize("target", ["", "site 1", "site/1", None, 3])
def test_invalid_targets_are_rejected(m: ModuleType, target: Any) -> None:
    with pytest.raises(ValueError, match="target"):
        FedJob().to(m.HelloExecutor(), target)


def test_ids_default_deduplicate_and_as_id(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    assert job.to_server(m.HelloController()) == "controller"
    assert job.to_server(m.HelloController()) == "controller_1"
    model = m.Model(width=4)
    assert job.to_server(model) == "model"
    assert job.to_server(model) == "model"  # the same object is configured once
    assert job.to_server(m.Model(width=5)) == "model_1"
    assert job.to_server(m.Holder(), id="store") == "store"
    assert job.as_id(model) == "model"
    with pytest.raises(ConfigError, match="id 'store' is already used"):
        job.to_server(m.Holder(), id="store")
    assert job.to_clients(m.HelloExecutor(), tasks=["a"]) == "executor"
    assert job.to_clients(m.HelloExecutor(), tasks=["b"]) == "executor_1"
    assert job.to(m.HelloExecutor(), "site-1", tasks=["c"]) == "executor_2"  # site-1 also runs the @ALL ones
    job_dir = Path(job.export_job(str(tmp_path)))
    server = read(job_dir / "app/config/config_fed_server.json")
    assert [w["id"] for w in server["workflows"]] == ["controller", "controller_1"]
    assert [c["id"] for c in server["components"]] == ["model", "model_1", "store"]
    site1 = read(job_dir / "app_site-1/config/config_fed_client.json")
    assert [(e["id"], e["tasks"]) for e in site1["executors"]] == [
        ("executor", ["a"]),
        ("executor_1", ["b"]),
        ("executor_2", ["c"]),
    ]
    models.load_job(str(job_dir))


def test_as_id_reference_adds_the_object_where_it_is_used(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    model = m.Model(width=2)
    ref = job.as_id(model)
    assert job.as_id(model) == ref
    job.to_server(m.HelloController())
    job.to_clients(m.Holder(value=ref))
    job_dir = Path(job.export_job(str(tmp_path)))
    components = read(job_dir / "app/config/config_fed_client.json")["components"]
    assert components == [
        {"id": "holder", "path": "p2p_modules.Holder", "args": {"value": ref}},
        {"id": ref, "path": "p2p_modules.Model", "args": {"width": 2}},
    ]


def test_snake_ids() -> None:
    assert snake_id("P2PExecutor") == "p2p_executor"
    assert snake_id("BasicController") == "basic_controller"
    assert snake_id("HTTPServer") == "http_server"


def test_duplicate_tasks_on_one_site_are_rejected(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to(m.HelloExecutor(), "site-1")
    with pytest.raises(ConfigError, match=r"tasks \['\*'\] already have an executor"):
        job.to(m.HelloExecutor(), "site-1")
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    with pytest.raises(ConfigError, match="task '\\*' has two executors"):
        job.export_job(str(tmp_path))


def test_kwargs_for_plain_components_and_controllers_are_rejected(m: ModuleType) -> None:
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        FedJob().to_server(m.Model(width=1), tasks=["x"])
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        FedJob().to_server(m.HelloController(), tasks=["x"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "a/b"},
        {"min_clients": 0},
        {"min_clients": True},
        {"mandatory_clients": "site-1"},
        {"mandatory_clients": ["server"]},
        {"meta_props": {"deploy_map": {}}},
        {"meta_props": {"x": object()}},
        {"fail_fast": "yes"},
    ],
)
def test_constructor_validates_its_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FedJob(**kwargs)


def test_empty_job_and_clients_without_server_cannot_be_exported(m: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is empty"):
        FedJob().export_job(str(tmp_path))
    job = FedJob()
    job.to_clients(m.HelloExecutor())
    with pytest.raises(ConfigError, match="nothing for the server"):
        job.export_job(str(tmp_path))


def test_reserved_app_params_are_rejected(m: ModuleType) -> None:
    with pytest.raises(ConfigError, match="workflows"):
        FedJob().to_server({"workflows": []})


# --- custom/ code and files -------------------------------------------------------------------------------
def test_custom_holds_the_component_module_and_the_local_modules_it_imports(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    job_dir = Path(job.export_job(str(tmp_path)))
    files = custom_files(job_dir / "app")
    assert files == LOCAL_CODE  # no stdlib (json), no numpy, no flarelite, not fixpkg/unused.py
    assert (job_dir / "app/custom/helpers_mod.py").read_text() == (Path(FIXTURES) / "helpers_mod.py").read_text()


def test_each_site_app_gets_its_own_custom_folder(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.HelloController())
    job.to(m.HelloExecutor(), "site-1")
    job_dir = Path(job.export_job(str(tmp_path)))
    assert custom_files(job_dir / "app_server") == LOCAL_CODE
    assert custom_files(job_dir / "app_site-1") == LOCAL_CODE


def test_set_app_packages_keeps_installed_packages_out_of_custom(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.set_app_packages(["fixpkg"])
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    job_dir = Path(job.export_job(str(tmp_path)))
    assert custom_files(job_dir / "app") == {"p2p_modules.py", "helpers_mod.py"}


def test_module_collector_skips_flarelite_stdlib_and_missing_modules() -> None:
    collector = ModuleCollector()
    assert collector.collect(["flarelite.apis.executor", "json", "numpy", "no_such_module_abc"]) == {}


def test_files_and_directories_are_copied(m: ModuleType, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkgdir").mkdir(parents=True)
    (src / "pkgdir/data.txt").write_text("d")
    (src / "train.py").write_text("print('train')\n")
    (src / "settings.json").write_text("{}")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "util.py").write_text("U = 1\n")

    job = FedJob()
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    job.to_clients(str(src / "train.py"))
    job.to_server(str(extra))  # a directory: its contents go to custom/
    job.add_file_to_clients(str(src / "pkgdir"), dest_dir="assets")
    job.add_file_to_server(str(src / "settings.json"), app_folder_type="config")
    out = Path(job.export_job(str(tmp_path / "jobs"))) / "app"
    assert (out / "custom/train.py").read_text() == "print('train')\n"
    assert (out / "custom/util.py").read_text() == "U = 1\n"
    assert (out / "custom/assets/pkgdir/data.txt").read_text() == "d"
    assert (out / "config/settings.json").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        job.add_file_to_server(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="app_folder_type"):
        job.add_file_to_server(str(src / "train.py"), app_folder_type="other")


# --- simulator ----------------------------------------------------------------------------------------------
def test_n_clients_with_per_site_targets_is_rejected(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.HelloController())
    job.to(m.HelloExecutor(), "site-1")
    with pytest.raises(ValueError, match="n_clients"):
        job.simulator_run(str(tmp_path / "ws"), n_clients=2)


def test_simulator_rejects_a_bad_log_config(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob()
    job.to_server(m.HelloController())
    job.to_clients(m.HelloExecutor())
    with pytest.raises(ConfigError, match="log_config"):
        job.simulator_run(str(tmp_path / "ws"), n_clients=1, log_config="no-such-mode")


def test_simulator_run_end_to_end(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="hello", min_clients=2)
    job.to_server(m.HelloController(rounds=2))
    job.to_clients(m.HelloExecutor(greeting_prefix="greet"))
    assert job.simulator_run(str(tmp_path / "ws"), n_clients=2) == 0
    log = tmp_path / "ws" / "site-1" / "log.txt"
    assert log.exists()
    assert "greet: hello from site-1" in log.read_text()
    assert (tmp_path / "ws" / "site-2" / "log.txt").exists()
    assert not any("flarelite_job_" in p for p in sys.path)  # the temporary job folder left no trace
