"""The run's progress line: what the server's task table says (rounds from NVFlare's task headers, results in,
whom a task waits for), plain lines when the output is not a terminal, one tqdm line when it is, and the
simulator turning its server process's piped lines into its own live line."""

from __future__ import annotations

import importlib
import io
import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from flarelite import progress
from flarelite.apis.shareable import Shareable
from flarelite.app_common.np.np_model_persistor import NPModelPersistor
from flarelite.app_common.workflows.fedavg import FedAvg
from flarelite.job_config import FedJob
from flarelite.progress import Lines, Live, Piped, RunProgress, piped_text


class Recorder:
    """A display that keeps every text it was given."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, tuple]] = []
        self.closed: list[tuple[str, tuple]] = []

    def show(self, text: str, snapshot: tuple) -> None:
        self.shown.append((text, snapshot))

    def close(self, text: str, snapshot: tuple) -> None:
        self.closed.append((text, snapshot))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def round_data(current: int, total: int) -> Shareable:
    data = Shareable()
    data.set_header("current_round", current)
    data.set_header("num_rounds", total)
    return data


def test_rounds_results_and_waiting_sites_come_from_the_task_table() -> None:
    shown = Recorder()
    p = RunProgress(shown)
    assert "waiting for the first task" in p.summary()
    p.task_out("t1", "train", ["site-1", "site-2", "site-3"], round_data(0, 3))
    assert shown.shown[-1][0].startswith("round 0 (0/3 done) | train: 0/3 results, waiting for site-1, site-2, site-3")
    p.result_in("t1", "site-2")
    p.result_in("t1", "site-2")  # counted once
    p.result_in("other", "site-1")  # not a standing task: ignored
    assert "train: 1/3 results, waiting for site-1, site-3" in shown.shown[-1][0]
    p.task_done("t1")
    assert shown.shown[-1][1] == (1, 3)
    p.task_out("t2", "train", ["site-1", "site-2", "site-3"], round_data(1, 3))
    assert shown.shown[-1][0].startswith("round 1 (1/3 done)")
    p.task_done("t2")
    p.close()
    assert shown.closed[-1][0].startswith("finished: 2/3 rounds done, 2 tasks in ")
    assert shown.closed[-1][1] == (2, 3)


def test_a_task_without_rounds_and_a_failed_run() -> None:
    shown = Recorder()
    p = RunProgress(shown)
    sites = [f"site-{i}" for i in range(1, 11)]
    p.task_out("t", "run_algorithm", sites, Shareable())  # no round headers (the p2p controller's task)
    assert shown.shown[-1][0].startswith("run_algorithm: 0/10 results | ")  # ten waiting: not named
    p.task_out("u", "a", ["site-1"], "not a shareable")
    p.task_out("v", "b", ["site-1"], None)
    assert "1 more tasks" in shown.shown[-1][0]
    p.close("site-3 failed: boom")
    assert shown.closed[-1][0].startswith("failed: site-3 failed: boom (0 tasks in ")


def test_a_display_that_raises_never_reaches_the_scheduler() -> None:
    class Broken:
        def show(self, text: str, snapshot: tuple) -> None:
            raise RuntimeError("display broke")

        close = show

    p = RunProgress(Broken())  # type: ignore[arg-type]
    p.task_out("t", "train", ["site-1"], round_data(0, 1))
    p.task_done("t")
    p.close()


def test_plain_lines_are_logged_at_most_every_interval_and_once_at_the_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=progress.LOGGER_NAME)
    lines = Lines(site="server", interval=3600)
    lines.show("round 1")
    lines.show("round 2")
    lines.close("finished: 2 tasks")
    texts = [r.getMessage() for r in caplog.records if r.name == progress.LOGGER_NAME]
    assert texts == ["finished: 2 tasks"]
    assert caplog.records[-1].site == "server"  # the server's log file gets it
    caplog.clear()
    eager = Lines(interval=0)
    eager.show("a")
    eager.show("b")
    assert [r.getMessage() for r in caplog.records] == ["a", "b"]


def test_piped_lines_carry_the_text_and_the_snapshot_back(capsys: pytest.CaptureFixture) -> None:
    piped = Piped(interval=0)
    piped.show("round 4 (4/10 done) | train: 1/3 results | 0:03", (4, 10))
    piped.close("finished: 10/10 rounds done, 10 tasks in 0:05", (10, 10))
    piped.show("train: 1/3 results", (0, None))
    out = capsys.readouterr().out.splitlines(keepends=True)
    texts = [piped_text(line)[0] for line in out]
    assert texts == [
        "round 4 (4/10 done) | train: 1/3 results | 0:03",
        "finished: 10/10 rounds done, 10 tasks in 0:05",
        "train: 1/3 results",
    ]
    assert [piped_text(line)[1] for line in out] == [(4, 10), (10, 10), (0, None)]
    assert piped_text("12:00:00 INFO progress round 3\n") is None  # only the marked lines
    assert piped_text(f"{progress.PIPE_MARK}not numbers\n") is None


def test_the_live_line_draws_with_tqdm_and_console_lines_go_above_it() -> None:
    pytest.importorskip("tqdm")
    term = FakeTerminal()
    handler = logging.StreamHandler(term)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        live = Live(term)
        live.show("round 0 (0/2 done) | train: 0/3 results", (0, 2))
        assert handler.stream is not term  # the console handler now writes above the line
        logging.getLogger("flarelite.test").warning("a console line")
        live.close("finished: 2/2 rounds done, 2 tasks in 0:01", (2, 2))
        assert handler.stream is term  # and back once the line is closed
        live.show("after close", (0, None))  # ignored
    finally:
        root.removeHandler(handler)
    text = term.getvalue()
    assert "round 0 (0/2 done) | train: 0/3 results" in text
    assert "a console line\n" in text
    assert text.rstrip().endswith("finished: 2/2 rounds done, 2 tasks in 0:01")
    assert "after close" not in text


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [("off", True, "off"), ("lines", True, "lines"), ("piped", False, "piped"), ("live", False, "live"),
     ("", True, "live"), ("", False, "lines"), ("nonsense", False, "lines")],
)  # fmt: skip
def test_the_choice_follows_the_environment_then_the_terminal(
    monkeypatch: pytest.MonkeyPatch, env: str, tty: bool, expected: str
) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setenv(progress.PROGRESS_ENV, env)
    monkeypatch.setattr("sys.stderr", FakeTerminal() if tty else io.StringIO())
    assert progress.choice() == expected
    display = progress.console_display("server")
    kinds = {"off": type(None), "lines": Lines, "piped": Piped, "live": Live}
    assert type(display) is kinds[expected]


@pytest.fixture()
def wf_fixtures(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``wf_fixtures`` as a top-level module (FedJob copies it to the job's custom/)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fedjob_fixtures"))
    return importlib.import_module("wf_fixtures")


def _fedavg_job(name: str, m: ModuleType) -> FedJob:
    job = FedJob(name=name, min_clients=2)
    job.to_server(FedAvg(num_clients=2, num_rounds=3))
    job.to_server(NPModelPersistor(model=[[0.0, 0.0]]), id="persistor")
    job.to_clients(m.AddTrainer(), tasks=["train"])  # adds 1.0 a round
    return job


def test_an_in_process_run_logs_its_rounds_in_the_server_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wf_fixtures: ModuleType
) -> None:
    monkeypatch.setenv(progress.PROGRESS_ENV, "lines")
    ws = tmp_path / "ws"
    assert _fedavg_job("progress_mem", wf_fixtures).simulator_run(str(ws), n_clients=2, protocol="memory") == 0
    log = (ws / "server" / "log.txt").read_text()
    assert "flarelite.progress - INFO - finished: 3/3 rounds done, 3 tasks in " in log
    np.testing.assert_allclose(np.load(ws / "server" / "models" / "server.npy"), [[3.0, 3.0]])


def test_the_simulator_shows_its_server_process_progress_on_one_live_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture, wf_fixtures: ModuleType
) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setenv(progress.PROGRESS_ENV, "live")  # as on a terminal; the sites' output is piped
    assert _fedavg_job("progress_proc", wf_fixtures).simulator_run(str(tmp_path / "ws"), n_clients=2) == 0
    err = capfd.readouterr().err
    assert progress.PIPE_MARK not in err  # the server's piped lines fed the live line, not the console
    assert "finished: 3/3 rounds done, 3 tasks in " in err
