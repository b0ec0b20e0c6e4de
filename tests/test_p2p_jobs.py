"""Peer-to-peer algorithms run as jobs: consensus (in memory and as processes), a directed ring, gradient
tracking against centralized training, and the failures a user can meet (a silent neighbour, a wrong network).
"""

from __future__ import annotations

import csv
import sys
import time

import numpy as np
import pytest
from test_p2p_helpers import JOBS, NoConfigExecutor, SilentExecutor, load_job_module

from flarelite.app_opt.p2p.controllers import DistOptController
from flarelite.app_opt.p2p.executors import ConsensusExecutor
from flarelite.app_opt.p2p.types import Config, Neighbor, Network, Node
from flarelite.app_opt.p2p.utils import generate_ring_network, network_from_matrix
from flarelite.errors import RunFailedError
from flarelite.job_config.api import FedJob

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def consensus_job():
    return load_job_module("p2p_consensus_job", JOBS / "consensus" / "job.py")


def histories(workspace, n: int) -> list[np.ndarray]:
    return [torch.load(workspace / f"site-{i}" / "value_sequence.pt").numpy() for i in range(1, n + 1)]


def assert_consensus_on_the_average(workspace, n: int, tolerance: float = 1e-6) -> None:
    values = histories(workspace, n)
    average = np.mean([h[0] for h in values])
    finals = np.array([h[-1] for h in values])
    assert np.all(np.abs(finals - average) <= tolerance), (finals, average)
    assert len({len(h) for h in values}) == 1


def test_consensus_in_memory(consensus_job, tmp_path):
    job, matrix = consensus_job.build_job(num_clients=6, seed=3)
    assert job.simulator_run(str(tmp_path), protocol="memory") == 0
    assert_consensus_on_the_average(tmp_path, 6)
    iterations = consensus_job.iterations_for(matrix)
    with open(tmp_path / "site-4" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(iterations + 1))
    assert float(rows[-1]["value"]) == pytest.approx(histories(tmp_path, 6)[3][-1])
    log = (tmp_path / "site-4" / "log.txt").read_text()
    assert f"iteration {iterations}/{iterations}" in log  # progress on the console and in the site's log


def test_consensus_as_processes(consensus_job, tmp_path):
    job, _ = consensus_job.build_job(num_clients=3, seed=4)
    assert job.simulator_run(str(tmp_path)) == 0  # the default: one process per site, gRPC over a Unix socket
    assert_consensus_on_the_average(tmp_path, 3)
    assert (tmp_path / "site-2" / "metrics.csv").is_file()
    # the job script checks the run from the metrics (no torch import there): the very values of the .pt files
    from_metrics = consensus_job.read_histories(str(tmp_path), 3)
    for i, saved in enumerate(histories(tmp_path, 3), start=1):
        np.testing.assert_array_equal(from_metrics[f"site-{i}"], saved)


def test_tutorial_directed_ring_exercise_runs(tmp_path):
    network = Network(
        nodes=[
            Node(id="site-1", neighbors=[Neighbor(id="site-2", weight=0.1)]),
            Node(id="site-2", neighbors=[Neighbor(id="site-3", weight=0.1)]),
            Node(id="site-3", neighbors=[Neighbor(id="site-1", weight=0.1)]),
        ]
    )
    job = FedJob(name="directed_ring")
    job.to_server(DistOptController(config=Config(network=network, extra={"iterations": 100})))
    for i in range(1, 4):
        job.to(ConsensusExecutor(), f"site-{i}")
    assert job.simulator_run(str(tmp_path), protocol="memory") == 0
    # uniform weights on a ring are doubly stochastic: the plain average again (0.854^100 ~ 1e-7)
    assert_consensus_on_the_average(tmp_path, 3, tolerance=1e-5)
    assert "not a neighbour of this site" not in (tmp_path / "site-1" / "log.txt").read_text()


def test_directed_ring_with_vector_values(tmp_path):
    network, _ = generate_ring_network(4, directed=True)
    job = FedJob(name="vectors")
    job.to_server(DistOptController(config=Config(network=network, extra={"iterations": 60})))
    for i in range(1, 5):
        job.to(ConsensusExecutor(initial_value=[float(i), -float(i)]), f"site-{i}")
    assert job.simulator_run(str(tmp_path), protocol="memory") == 0
    finals = [h[-1] for h in histories(tmp_path, 4)]
    np.testing.assert_allclose(finals, [[2.5, -2.5]] * 4, atol=1e-6)
    assert "value_norm" in (tmp_path / "site-1" / "metrics.csv").read_text().splitlines()[0]


@pytest.fixture
def gradient_tracking():
    """The gradient-tracking job's modules, loaded as the job script loads them (``import modules``)."""
    saved_modules, saved_path = sys.modules.pop("modules", None), list(sys.path)
    threads = torch.get_num_threads()
    try:
        job_module = load_job_module("p2p_gradient_tracking_job", JOBS / "gradient-tracking" / "job.py")
        yield job_module, sys.modules["modules"]
    finally:
        sys.modules.pop("modules", None)
        if saved_modules is not None:
            sys.modules["modules"] = saved_modules
        sys.path[:] = saved_path
        torch.set_num_threads(threads)


def test_gradient_tracking_reaches_the_centralized_optimum(gradient_tracking, tmp_path):
    job_module, modules = gradient_tracking
    num_sites = 4
    job = job_module.build_job(num_clients=num_sites)
    assert job.simulator_run(str(tmp_path), protocol="memory") == 0

    # centralized training of the same model on all the data
    x, y = modules.load_data()
    central = modules.make_model()
    objective = modules.RegularizedCrossEntropy(central, scale=1.0 / len(y))
    optimizer = torch.optim.LBFGS(
        central.parameters(), max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        value = objective(central(x), y)
        value.backward()
        return value

    optimizer.step(closure)
    optimum = modules.objective(central, x, y)

    sizes = [len(modules.site_indices(i, num_sites)) for i in range(1, num_sites + 1)]
    assert sum(sizes) == len(y) and len(set(sizes)) > 1  # different slices, together all the data
    for i in range(1, num_sites + 1):
        model = modules.make_model()
        model.load_state_dict(torch.load(tmp_path / f"site-{i}" / "model.pt"))
        assert modules.objective(model, x, y) - optimum < 1e-3
        assert modules.objective(model, x, y) >= optimum - 1e-5
        losses = torch.load(tmp_path / f"site-{i}" / "train_loss_sequence.pt")
        assert losses.shape[1] == 2 and losses[-1, 1] < losses[0, 1]
        with open(tmp_path / f"site-{i}" / "metrics.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == 200


def test_a_silent_neighbour_fails_the_run_naming_it(tmp_path):
    network, _ = generate_ring_network(3)
    job = FedJob(name="silent")
    job.to_server(DistOptController(config=Config(network=network, extra={"iterations": 50})))
    job.to(ConsensusExecutor(sync_timeout=1.5), "site-1")
    job.to(ConsensusExecutor(sync_timeout=1.5), "site-2")
    job.to(SilentExecutor(), "site-3")
    start = time.monotonic()
    with pytest.raises(RunFailedError, match="no value from neighbour\\(s\\) site-3 for iteration 0 within 1.5s"):
        job.simulator_run(str(tmp_path), protocol="memory")
    assert time.monotonic() - start < 15


def test_a_site_that_fails_the_config_task_is_named(tmp_path):
    network, _ = generate_ring_network(3)
    job = FedJob(name="noconfig")
    job.to_server(DistOptController(config=Config(network=network, extra={"iterations": 5})))
    job.to(ConsensusExecutor(), "site-1")
    job.to(NoConfigExecutor(), "site-2")
    job.to(ConsensusExecutor(), "site-3")
    with pytest.raises(RunFailedError, match="site site-2 failed the 'config' task \\(TASK_UNKNOWN"):
        job.simulator_run(str(tmp_path), protocol="memory")


def test_a_site_that_fails_the_algorithm_is_named(tmp_path):
    network, _ = generate_ring_network(3)
    job = FedJob(name="noiterations")
    job.to_server(DistOptController(config=Config(network=network, extra={})))
    for i in range(1, 4):
        job.to(ConsensusExecutor(), f"site-{i}")
    with pytest.raises(RunFailedError, match="site site-\\d failed the 'run_algorithm' task.*no 'iterations'"):
        job.simulator_run(str(tmp_path), protocol="memory")


def test_network_nodes_must_be_the_jobs_sites(tmp_path):
    network = network_from_matrix(generate_ring_network(3)[1], names=["site-1", "site-2", "site-9"])
    job = FedJob(name="wrongnames")
    job.to_server(DistOptController(config=Config(network=network, extra={"iterations": 5})))
    for i in range(1, 4):
        job.to(ConsensusExecutor(), f"site-{i}")
    with pytest.raises(RunFailedError, match="network nodes \\['site-9'\\] are not client sites of this job"):
        job.simulator_run(str(tmp_path), protocol="memory")


def test_consensus_above_the_blocked_site_limit_fails_naming_it(consensus_job, tmp_path):
    """Its executors wait for their peers with a timeout of their own (sync_timeout), shorter than the stall watch:
    the run fails by that timeout, and the error still names the limit that made the peers wait."""
    job, _ = consensus_job.build_job(num_clients=3, seed=5, iterations=5, sync_timeout=1)
    with pytest.raises(RunFailedError, match=r"sync_timeout.*max_blocked_sites=2.*raise max_blocked_sites"):
        job.simulator_run(str(tmp_path), protocol="memory", max_blocked_sites=2)
