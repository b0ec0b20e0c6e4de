"""The Job Recipe API: construction errors, export, --export, SimEnv and PocEnv runs, the PyTorch persistor."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flarelite.app_common.np.recipes.fedavg import NumpyFedAvgRecipe
from flarelite.recipe import (
    PocEnv,
    Run,
    SimEnv,
    add_cross_site_evaluation,
    add_experiment_tracking,
    set_per_site_config,
    set_recipe_meta,
)
from flarelite.recipe.fedavg import resolve_key_metric_mode
from flarelite.recipe.spec import ExecEnv, take_export_args

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "recipe_fixtures")
NP_CLIENT = os.path.join(FIXTURES, "np_client.py")
PT_CLIENT = os.path.join(FIXTURES, "pt_client.py")
INITIAL = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]


def numpy_recipe(name: str = "hello-numpy", **kwargs) -> NumpyFedAvgRecipe:
    kwargs.setdefault("min_clients", 2)
    kwargs.setdefault("num_rounds", 2)
    return NumpyFedAvgRecipe(name=name, model=INITIAL, train_script=NP_CLIENT, **kwargs)


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def by_id(entries: list[dict]) -> dict[str, dict]:
    return {e["id"]: e for e in entries}


def tiny_pt_recipe(name: str, hidden: int = 2, **kwargs):
    """``(net, recipe)``: a PyTorch FedAvgRecipe of TinyNet trained by pt_client.py on 2 clients."""
    sys.path.insert(0, FIXTURES)
    try:
        from tiny_net import TinyNet

        from flarelite.app_opt.pt.recipes.fedavg import FedAvgRecipe

        net = TinyNet(hidden=hidden)
        return net, FedAvgRecipe(name=name, min_clients=2, model=net, train_script=PT_CLIENT, **kwargs)
    finally:
        sys.path.remove(FIXTURES)


def check_pt_models(torch, folder: str, net) -> None:
    """The global and best models of a 2-round run of pt_client.py (each round adds 1 to every parameter)."""
    final = torch.load(os.path.join(folder, "FL_global_model.pt"), weights_only=True)
    assert set(final) == {"model", "meta_props", "train_conf"}
    assert final["train_conf"] == {"train": {"model": "TinyNet"}}
    assert set(final["model"]) == set(net.state_dict())
    # the accuracy rises each round, so the model sent in round 1 (the initial one + 1) is the best one
    best = torch.load(os.path.join(folder, "best_FL_global_model.pt"), weights_only=True)
    for key, value in final["model"].items():
        assert value.dtype == torch.float32 and value.shape == net.state_dict()[key].shape
        torch.testing.assert_close(value, best["model"][key] + 1)


# --- construction errors ----------------------------------------------------------------------------------
def test_a_recipe_needs_an_initial_model():
    with pytest.raises(ValueError, match="no initial model"):
        NumpyFedAvgRecipe(min_clients=2, train_script=NP_CLIENT)


def test_numpy_model_must_be_a_list_or_an_array():
    with pytest.raises(TypeError, match="list or a numpy array"):
        NumpyFedAvgRecipe(min_clients=2, train_script=NP_CLIENT, model={"w": 1})
    recipe = NumpyFedAvgRecipe(min_clients=1, train_script=NP_CLIENT, model=np.ones((2, 2), dtype=np.float32))
    assert recipe.model == [[1.0, 1.0], [1.0, 1.0]]
    assert recipe.framework.value == "raw"  # NVFlare's value after construction


def test_key_metric_mode_follows_stop_cond_and_refuses_a_contradiction():
    assert resolve_key_metric_mode("accuracy", None, None) == "max"
    assert resolve_key_metric_mode("accuracy", None, "accuracy >= 0.9") == "max"
    assert resolve_key_metric_mode("loss", None, "loss < 0.1") == "min"
    assert resolve_key_metric_mode("accuracy", None, "loss < 0.1") == "max"  # another metric: no inference
    with pytest.raises(ValueError, match="contradicts stop_cond"):
        numpy_recipe(key_metric="accuracy", key_metric_mode="min", stop_cond="accuracy >= 0.9")
    with pytest.raises(ValueError, match="'min', 'max' or None"):
        numpy_recipe(key_metric_mode="best")


def test_save_filename_is_a_deprecated_alias_that_must_agree():
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="disagree"):
        numpy_recipe(save_filename="a.npy", best_model_filename="b.npy")


def test_min_clients_and_train_script_are_checked():
    with pytest.raises(ValueError, match="min_clients"):
        numpy_recipe(min_clients=0)
    with pytest.raises(ValueError, match="train_script"):
        NumpyFedAvgRecipe(min_clients=1, model=INITIAL, train_script="")


def test_sim_env_arguments():
    with pytest.raises(ValueError, match="num_clients > 0"):
        SimEnv()
    with pytest.raises(ValueError, match="does not match"):
        SimEnv(num_clients=3, clients=["a", "b"])
    with pytest.raises(ValueError, match="protocol"):
        SimEnv(num_clients=1, protocol="pigeon")
    env = SimEnv(clients=["a", "b"], workspace_root="/tmp/x")
    assert (env.num_clients, env.num_threads) == (2, 2)


def test_sim_env_workspace_root_default_and_override(monkeypatch):
    monkeypatch.delenv("FLARELITE_SIMULATOR_WORKSPACE_ROOT", raising=False)
    assert SimEnv(num_clients=1).workspace_root == "/tmp/flarelite/simulation"
    monkeypatch.setenv("FLARELITE_SIMULATOR_WORKSPACE_ROOT", "/tmp/elsewhere")
    assert SimEnv(num_clients=1, workspace_root="/tmp/x").workspace_root == "/tmp/elsewhere"


def test_poc_env_refuses_what_flarelite_poc_does_not_have():
    with pytest.raises(ValueError, match="homomorphic"):
        PocEnv(use_he=True)
    with pytest.raises(ValueError, match="containers"):
        PocEnv(docker_image="nvflare:latest")
    with pytest.raises(ValueError, match="provision"):
        PocEnv(project_conf_path="project.yml")
    assert PocEnv(clients=["a", "b", "c"]).num_clients == 3  # clients win over num_clients, as in NVFlare


def test_tracking_errors(monkeypatch):
    recipe = numpy_recipe()
    with pytest.raises(ValueError, match="invalid tracking_type"):
        add_experiment_tracking(recipe, "carrier-pigeon")
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(ValueError, match="tensorboard is not installed"):
        add_experiment_tracking(recipe, "tensorboard")


def test_per_site_config_is_checked_and_must_come_before_export(tmp_path):
    recipe = numpy_recipe()
    with pytest.raises(ValueError, match="unknown keys"):
        set_per_site_config(recipe, {"site-1": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="client site names"):
        set_per_site_config(recipe, {"server": {}})
    recipe.export(str(tmp_path))
    with pytest.raises(RuntimeError, match="already built"):
        set_per_site_config(recipe, {"site-1": {"train_args": "--step 2"}})


def test_cross_site_evaluation_is_added_once():
    recipe = numpy_recipe()
    add_cross_site_evaluation(recipe)
    with pytest.raises(RuntimeError, match="already added"):
        add_cross_site_evaluation(recipe)


def test_a_missing_training_script_is_named_at_export(tmp_path):
    recipe = NumpyFedAvgRecipe(min_clients=1, model=INITIAL, train_script=str(tmp_path / "nope.py"))
    with pytest.raises(ValueError, match="nope.py"):
        recipe.export(str(tmp_path / "jobs"))


# --- Run ----------------------------------------------------------------------------------------------------
class _FakeEnv(ExecEnv):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def deploy(self, job):
        return job.name

    def get_job_status(self, job_id):
        self.calls.append(("status", job_id))
        return "FINISHED:COMPLETED"

    def abort_job(self, job_id):
        self.calls.append(("abort", job_id))

    def get_job_result(self, job_id, timeout=0.0):
        self.calls.append(("result", job_id, timeout))
        return f"/results/{job_id}"

    def stop(self, clean_up=False):
        self.calls.append(("stop", clean_up))


def test_run_caches_the_result_and_stops_the_environment_once():
    env = _FakeEnv()
    run = Run(env, "job-1")
    assert run.get_job_id() == "job-1"
    assert run.get_result(timeout=5.0, clean_up=False) == "/results/job-1"
    assert run.get_result() == "/results/job-1"
    assert run.get_status() == "FINISHED:COMPLETED"
    run.abort()  # a no-op once stopped
    assert env.calls == [("result", "job-1", 5.0), ("status", "job-1"), ("stop", False)]


# --- export -----------------------------------------------------------------------------------------------
def test_numpy_recipe_exports_nvflare_components(tmp_path):
    from flarelite.app_common.filters import ExcludeVars

    recipe = numpy_recipe()
    add_experiment_tracking(recipe, "tensorboard")
    recipe.add_client_output_filter(ExcludeVars(["nothing"]))  # tasks=None: every task
    recipe.add_server_config({"my_server_key": 1})
    recipe.add_client_config({"my_client_key": 2})
    set_recipe_meta(recipe, "owner", "tests")
    job_dir = recipe.export(str(tmp_path))
    meta = read_json(os.path.join(job_dir, "meta.json"))
    assert meta["name"] == "hello-numpy" and meta["min_clients"] == 2 and meta["owner"] == "tests"
    assert meta["deploy_map"] == {"app": ["@ALL"]}
    server = read_json(os.path.join(job_dir, "app", "config", "config_fed_server.json"))
    comps = by_id(server["components"])
    assert comps["persistor"]["path"] == "flarelite.app_common.np.np_model_persistor.NPModelPersistor"
    assert comps["persistor"]["args"]["model"] == INITIAL
    assert comps["json_generator"]["path"].endswith("ValidationJsonGenerator")
    assert comps["model_selector"]["path"].endswith("IntimeModelSelector")
    assert comps["metrics_artifact_writer"]["path"].endswith("MetricsArtifactWriter")
    assert comps["receiver"]["path"] == "flarelite.app_opt.tracking.tb.tb_receiver.TBAnalyticsReceiver"
    (workflow,) = server["workflows"]
    assert workflow["path"] == "flarelite.app_common.workflows.fedavg.FedAvg"
    assert workflow["args"]["num_clients"] == 2 and workflow["args"]["num_rounds"] == 2  # num_clients = min_clients
    assert server["my_server_key"] == 1
    client = read_json(os.path.join(job_dir, "app", "config", "config_fed_client.json"))
    (executor,) = client["executors"]
    assert executor["executor"]["path"] == "flarelite.app_common.executors.client_api_executor.ClientAPIExecutor"
    assert executor["executor"]["args"]["params_exchange_format"] == "numpy"
    assert by_id(client["components"])["event_to_fed"]["path"].endswith("ConvertToFedEvent")
    assert client["task_result_filters"][0]["tasks"] == ["*"]
    assert client["task_result_filters"][0]["filters"][0]["path"].endswith("ExcludeVars")
    assert client["my_client_key"] == 2
    assert os.path.isfile(os.path.join(job_dir, "app", "custom", "np_client.py"))


def test_per_site_config_gives_each_site_its_app(tmp_path):
    recipe = numpy_recipe()
    set_per_site_config(recipe, {"site-1": {"train_args": "--step 1"}, "site-2": {"train_args": "--step 3"}})
    recipe.add_client_file(os.path.join(FIXTURES, "tiny_net.py"), clients=["site-1"])
    recipe.add_server_file(os.path.join(FIXTURES, "export_job.py"))
    job_dir = recipe.export(str(tmp_path))
    meta = read_json(os.path.join(job_dir, "meta.json"))
    assert meta["deploy_map"] == {"app_server": ["server"], "app_site-1": ["site-1"], "app_site-2": ["site-2"]}
    for site, step in (("site-1", "1"), ("site-2", "3")):
        client = read_json(os.path.join(job_dir, f"app_{site}", "config", "config_fed_client.json"))
        assert client["executors"][0]["executor"]["args"]["task_script_args"] == f"--step {step}"
        assert "event_to_fed" in by_id(client["components"])
    assert os.path.isfile(os.path.join(job_dir, "app_site-1", "custom", "tiny_net.py"))
    assert not os.path.exists(os.path.join(job_dir, "app_site-2", "custom", "tiny_net.py"))
    assert os.path.isfile(os.path.join(job_dir, "app_server", "custom", "export_job.py"))


def test_mlflow_tracking_names_the_experiment_after_the_recipe(tmp_path):
    pytest.importorskip("mlflow")
    recipe = numpy_recipe(name="tracked")
    add_experiment_tracking(recipe, "mlflow", {"kw_args": {"run_tags": {"a": "b"}}}, client_side=True)
    job_dir = recipe.export(str(tmp_path))
    server = by_id(read_json(os.path.join(job_dir, "app", "config", "config_fed_server.json"))["components"])
    assert server["receiver"]["path"] == "flarelite.app_opt.tracking.mlflow.mlflow_receiver.MLflowReceiver"
    assert server["receiver"]["args"]["kw_args"] == {
        "run_tags": {"a": "b"},
        "experiment_name": "tracked-experiment",
        "run_name": "tracked-Server",
    }
    client = by_id(read_json(os.path.join(job_dir, "app", "config", "config_fed_client.json"))["components"])
    assert client["client_receiver"]["args"]["kw_args"]["run_name"] == "tracked-Client"
    assert client["client_receiver"]["args"]["events"] == ["analytix_log_stats", "fed.analytix_log_stats"]


def test_two_trackers_on_one_recipe_get_their_own_ids(tmp_path):
    pytest.importorskip("mlflow")
    recipe = numpy_recipe(name="two")
    add_experiment_tracking(recipe, "tensorboard")
    add_experiment_tracking(recipe, "mlflow", client_side=True)
    job_dir = recipe.export(str(tmp_path))
    server = by_id(read_json(os.path.join(job_dir, "app", "config", "config_fed_server.json"))["components"])
    assert server["receiver"]["path"].endswith("TBAnalyticsReceiver")
    assert server["receiver_1"]["path"].endswith("MLflowReceiver")
    client = by_id(read_json(os.path.join(job_dir, "app", "config", "config_fed_client.json"))["components"])
    assert client["client_receiver_1"]["path"].endswith("MLflowReceiver")


def test_pytorch_recipe_exports_the_model_and_its_module(tmp_path):
    pytest.importorskip("torch")
    _, recipe = tiny_pt_recipe("hello-pt", hidden=4)
    job_dir = recipe.export(str(tmp_path))
    server = read_json(os.path.join(job_dir, "app", "config", "config_fed_server.json"))
    comps = by_id(server["components"])
    assert comps["persistor"]["path"] == "flarelite.app_opt.pt.file_model_persistor.PTFileModelPersistor"
    assert comps["persistor"]["args"]["model"] == {"path": "tiny_net.TinyNet", "args": {"hidden": 4}}
    assert comps["locator"] == {
        "id": "locator",
        "path": "flarelite.app_opt.pt.file_model_locator.PTFileModelLocator",
        "args": {"pt_persistor_id": "persistor"},
    }
    assert server["workflows"][0]["args"].get("persistor_id", "persistor") == "persistor"  # the default
    assert os.path.isfile(os.path.join(job_dir, "app", "custom", "tiny_net.py"))
    client = read_json(os.path.join(job_dir, "app", "config", "config_fed_client.json"))
    assert client["executors"][0]["executor"]["args"].get("params_exchange_format", "pytorch") == "pytorch"


# --- --export ---------------------------------------------------------------------------------------------
def test_export_args_are_taken_out_of_argv():
    argv = ["job.py", "--n_clients", "3", "--export", "--export-dir", "out", "-v"]
    assert take_export_args(argv) == (True, "out")
    assert argv == ["job.py", "--n_clients", "3", "-v"]
    argv = ["job.py", "--export-dir=elsewhere"]
    assert take_export_args(argv) == (False, "elsewhere")
    assert argv == ["job.py"]
    with pytest.raises(ValueError, match="needs a folder"):
        take_export_args(["job.py", "--export-dir"])


def test_execute_with_export_writes_the_job_and_exits(tmp_path):
    out = tmp_path / "exported"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(FIXTURES, "export_job.py"),
            "--n_clients",
            "3",
            "--export",
            "--export-dir",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exported job 'exported-numpy'" in proc.stdout
    assert read_json(out / "exported-numpy" / "meta.json")["min_clients"] == 3


# --- runs -------------------------------------------------------------------------------------------------
def test_numpy_recipe_runs_in_sim_env_with_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    recipe = numpy_recipe()
    add_experiment_tracking(recipe, tracking_type="tensorboard")
    run = recipe.execute(SimEnv(num_clients=2, workspace_root=str(tmp_path)))
    result = run.get_result()
    assert result == str(tmp_path / "hello-numpy")
    assert run.get_status() is None and run.get_job_id() == "hello-numpy"
    model = np.load(os.path.join(result, "server", "models", "server.npy"))
    np.testing.assert_allclose(model, np.array(INITIAL) + 2)  # two rounds, each client adds 1
    for site in ("site-1", "site-2"):
        events = glob.glob(
            os.path.join(result, "server", "tb_events", site, "**", "events.out.tfevents.*"), recursive=True
        )
        assert events, f"no TensorBoard events for {site} under {result}/server/tb_events"


CSE_CLIENT = """
import numpy as np
import flarelite.client as flare
from flarelite.app_common.np.constants import NPConstants

flare.init()
last = None
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    if flare.is_train():
        last = np.asarray(model.params[NPConstants.NUMPY_KEY]) + 1
        flare.send(flare.FLModel(params={NPConstants.NUMPY_KEY: last}, metrics={"accuracy": 0.5}))
    elif flare.is_evaluate():
        flare.send(flare.FLModel(metrics={"accuracy": -1.0}))  # NPValidator takes "validate": never reached
    elif flare.is_submit_model():
        flare.send(flare.FLModel(params={NPConstants.NUMPY_KEY: last}))
"""


def test_numpy_recipe_with_cross_site_evaluation_as_hello_numpy_cross_val(tmp_path):
    script = tmp_path / "cse_client.py"
    script.write_text(CSE_CLIENT)
    recipe = NumpyFedAvgRecipe(
        name="hello-numpy-cse", min_clients=2, num_rounds=2, model=INITIAL, train_script=str(script)
    )
    add_cross_site_evaluation(recipe)
    run = recipe.execute(SimEnv(num_clients=2, workspace_root=str(tmp_path / "ws"), protocol="memory"))
    cross_val = os.path.join(run.get_result(), "server", "cross_site_val")
    results = read_json(os.path.join(cross_val, "cross_val_results.json"))
    # every model is INITIAL + 2 after two rounds; NPValidator scores sum(w / max(w)) + random() in [0, 1)
    score = float(np.sum(np.array(INITIAL) + 2) / 11)
    assert sorted(results) == ["site-1", "site-2"]
    for data_client in ("site-1", "site-2"):
        assert sorted(results[data_client]) == ["SRV_server", "site-1", "site-2"]
        for metrics in results[data_client].values():
            assert score <= metrics["accuracy"] < score + 1
    assert sorted(os.listdir(os.path.join(cross_val, "model_shareables"))) == ["SRV_server", "site-1", "site-2"]


def test_pytorch_recipe_saves_a_global_model_that_loads_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    net, recipe = tiny_pt_recipe("hello-pt", num_rounds=2)
    run = recipe.execute(SimEnv(num_clients=2, workspace_root=str(tmp_path), protocol="memory"))
    result = run.get_result()
    found = glob.glob(os.path.join(result, "**", "FL_global_model.pt"), recursive=True)
    assert found, f"FL_global_model.pt is not in the job's workspace {result}"
    check_pt_models(torch, os.path.dirname(found[0]), net)


def test_poc_env_runs_the_job_as_processes(tmp_path):
    recipe = numpy_recipe(name="poc-numpy", num_rounds=1)
    set_per_site_config(recipe, {"site-1": {"train_args": "--step 1"}, "site-2": {"train_args": "--step 3"}})
    env = PocEnv(num_clients=2, poc_workspace=str(tmp_path), protocol="unix", connect_timeout=30.0)
    run = recipe.execute(env)
    assert run.get_job_id() == "poc-numpy"
    result = run.get_result(timeout=120.0, clean_up=False)
    assert result == str(tmp_path / "poc-numpy")
    assert run.get_status() == "FINISHED:COMPLETED"
    model = np.load(os.path.join(result, "server", "models", "server.npy"))
    np.testing.assert_allclose(model, np.array(INITIAL) + (1 * 1 + 3 * 3) / 4)  # weighted by NUM_STEPS
    assert os.path.isfile(os.path.join(result, "site-2", "log.txt"))
    env.stop(clean_up=True)
    assert not os.path.exists(result)


def test_poc_env_aborts_a_running_job(tmp_path):
    recipe = numpy_recipe(name="poc-abort", num_rounds=200, train_args="--sleep 0.2")
    env = PocEnv(num_clients=2, poc_workspace=str(tmp_path), protocol="unix", connect_timeout=30.0)
    run = recipe.execute(env)
    assert run.get_status() == "RUNNING"
    assert env.get_job_result("poc-abort", timeout=0.5) is None  # still running: no result yet
    with pytest.raises(ValueError, match="no job 'poc-abort' was deployed here"):
        PocEnv(num_clients=2, poc_workspace=str(tmp_path)).get_job_status("poc-abort")
    run.abort()
    assert run.get_status() == "FINISHED:ABORTED"
    assert run.get_result(clean_up=True) == str(tmp_path / "poc-abort")
    assert run.get_status() == "FINISHED:ABORTED"  # cached: the environment has been stopped and cleaned up
    assert not os.path.exists(tmp_path / "poc-abort")


def test_pytorch_recipe_in_poc_env_saves_the_model_in_the_server_app_folder(tmp_path):
    torch = pytest.importorskip("torch")
    net, recipe = tiny_pt_recipe("poc-pt", num_rounds=2)
    env = PocEnv(num_clients=2, poc_workspace=str(tmp_path), protocol="unix", connect_timeout=60.0)
    run = recipe.execute(env)
    result = run.get_result(timeout=180.0, clean_up=False)
    assert run.get_status() == "FINISHED:COMPLETED"
    app_dir = os.path.join(result, "server", "app")  # NVFlare: <ws>/server/<job id>/app_server
    check_pt_models(torch, app_dir, net)
    env.stop(clean_up=True)


# --- job helpers ------------------------------------------------------------------------------------------
def test_base_fed_job_adds_the_server_widgets_and_the_client_relay(tmp_path):
    from flarelite.app_common.workflows.fedavg import FedAvg
    from flarelite.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
    from flarelite.job_config.base_fed_job import BaseFedJob
    from flarelite.job_config.script_runner import ScriptRunner

    with pytest.raises(ValueError, match="key_metric_mode"):
        BaseFedJob(key_metric_mode="best")
    job = BaseFedJob(name="plain", key_metric="")
    assert set(job._apps["server"].ids()) == {"json_generator", "metrics_artifact_writer"}  # no selector, no receiver
    job = BaseFedJob(name="neutral", key_metric="loss", key_metric_mode="min", analytics_receiver=TBAnalyticsReceiver())
    job.to_server(FedAvg(num_clients=2, num_rounds=1, model={"w": [1.0]}))
    job.to(ScriptRunner(NP_CLIENT, framework="numpy"), "site-1")
    job.to(ScriptRunner(NP_CLIENT, framework="numpy"), "site-2")
    job_dir = job.export_job(str(tmp_path))
    server = by_id(read_json(os.path.join(job_dir, "app_server", "config", "config_fed_server.json"))["components"])
    assert set(server) == {"json_generator", "model_selector", "metrics_artifact_writer", "receiver"}
    assert server["model_selector"]["args"] == {"key_metric": "loss", "negate_key_metric": True}
    for site in ("site-1", "site-2"):
        client = read_json(os.path.join(job_dir, f"app_{site}", "config", "config_fed_client.json"))
        assert by_id(client["components"])["event_to_fed"]["args"] == {"events_to_convert": ["analytix_log_stats"]}


def test_fed_avg_job_puts_the_model_on_the_server(tmp_path):
    pytest.importorskip("torch")
    from flarelite.app_opt.pt.job_config.base_fed_job import BaseFedJob
    from flarelite.app_opt.pt.job_config.fed_avg import FedAvgJob
    from flarelite.job_config.script_runner import ScriptRunner

    sys.path.insert(0, FIXTURES)
    try:
        from tiny_net import TinyNet

        with pytest.raises(ValueError, match="torch.nn.Module"):
            FedAvgJob(initial_model="net", n_clients=2, num_rounds=1)
        with pytest.raises(TypeError, match="torch.nn.Module"):
            BaseFedJob(initial_model=[1, 2])
        job = FedAvgJob(initial_model=TinyNet(), n_clients=2, num_rounds=3, name="pt-job")
        assert job.comp_ids == {"persistor_id": "persistor", "locator_id": "locator"}
        job.to(ScriptRunner(PT_CLIENT), "site-1")
        job_dir = job.export_job(str(tmp_path))
    finally:
        sys.path.remove(FIXTURES)
    server = read_json(os.path.join(job_dir, "app_server", "config", "config_fed_server.json"))
    comps = by_id(server["components"])
    assert list(comps) == ["json_generator", "model_selector", "metrics_artifact_writer", "persistor", "locator"]
    assert server["workflows"][0]["args"]["num_rounds"] == 3 and server["workflows"][0]["args"]["num_clients"] == 2
