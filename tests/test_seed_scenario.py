"""The seed document's scenario, code as the NVFlare tutorial writes it (import root changed), run end to end."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

SEED_MODULES = """
from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal

TIMEOUT = {timeout}
TARGETS_NONE = {targets_none}
SERVER_HANDLER = {server_handler}


class BasicController(Controller):

    def start_controller(self, fl_ctx: FLContext):
        if SERVER_HANDLER:
            fl_ctx.get_engine().register_aux_message_handler(topic="hello", message_handle_func=self._handle)

    def _handle(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        sender = request.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default=None)
        self.log_info(fl_ctx, f"Server received message from {{sender}}: {{from_shareable(request).data['message']}}")
        return make_reply(ReturnCode.OK)

    def stop_controller(self, fl_ctx: FLContext):
        pass

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext):
        self.broadcast_and_wait(
            task=Task(name="talk", data=Shareable()),
            targets=None,
            min_responses=0,
            fl_ctx=fl_ctx,
        )


class P2PExecutor(Executor):

    def execute(
        self,
        task_name: str,
        shareable: Shareable,
        fl_ctx: FLContext,
        abort_signal: Signal,
    ):

        if task_name == "talk":
            engine = fl_ctx.get_engine()
            identity_name = fl_ctx.get_identity_name()

            replies = engine.send_aux_request(
                targets=None if TARGETS_NONE else [f"site-{{i}}" for i in range(3) if f"site-{{i}}" != identity_name],
                topic="hello",
                request=DXO(
                    data_kind=DataKind.APP_DEFINED,
                    data={{
                        "message": f"Hello from {{identity_name}}",
                    }},
                ).to_shareable(),
                timeout=TIMEOUT,
                fl_ctx=fl_ctx,
            )
            self.log_info(fl_ctx, "replies: " + str(sorted((k, v.get_return_code()) for k, v in replies.items())))
            return make_reply(ReturnCode.OK)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()

            # Register the aux message handler
            engine.register_aux_message_handler(topic="hello", message_handle_func=self._handle_aux_request)

    def _handle_aux_request(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        sender = request.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default=None) # extract sender name
        received_message = from_shareable(request).data["message"]

        # log received message
        self.log_info(fl_ctx, f"Received message from {{sender}}: {{received_message}}")

        return make_reply(ReturnCode.OK)
"""

SEED_SCRIPT = """
from flarelite.job_config.api import FedJob
from modules import BasicController, P2PExecutor

job = FedJob(name="p2p_job")

controller = BasicController()
job.to_server(controller)

num_clients = 3
for i in range(num_clients):
    executor = P2PExecutor()
    job.to(executor, f"site-{i}")

job.simulator_run("./tmp/")
"""

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - P2PExecutor - INFO - "
    r"\[identity=(site-\d), run=simulate_job, peer=(site-\d), peer_run=simulate_job\] - "
    r"Received message from (site-\d): Hello from (site-\d)$"
)


def run_seed(tmp_path, timeout=10, targets_none=False, server_handler=False, run_args=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "modules.py").write_text(
        SEED_MODULES.format(timeout=timeout, targets_none=targets_none, server_handler=server_handler)
    )
    script = textwrap.dedent(SEED_SCRIPT)
    if run_args:
        script = script.replace('job.simulator_run("./tmp/")', f'job.simulator_run("./tmp/", {run_args})')
    (tmp_path / "job.py").write_text(script)
    proc = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = {s: (tmp_path / "tmp" / s / "log.txt").read_text() for s in ("server", "site-0", "site-1", "site-2")}
    return proc, logs


def received_lines(text):
    return [m.groups() for m in map(LINE.match, text.splitlines()) if m]


@pytest.mark.parametrize("timeout", [10, 0])
def test_exactly_six_messages_every_run(tmp_path, timeout):
    for attempt in range(3):
        proc, logs = run_seed(tmp_path / f"run{attempt}", timeout=timeout)
        console = received_lines(proc.stderr)
        assert len(console) == 6, proc.stderr[-3000:]
        pairs = sorted((me, sender) for me, peer, sender, hello in console)
        assert pairs == sorted(
            (a, b) for a in ("site-0", "site-1", "site-2") for b in ("site-0", "site-1", "site-2") if a != b
        )
        for me, peer, sender, hello in console:
            assert peer == sender == hello
        for site in ("site-0", "site-1", "site-2"):
            in_file = received_lines(logs[site])
            assert len(in_file) == 2 and all(g[0] == site for g in in_file)
        if timeout:
            assert "replies: [('site-1', 'OK'), ('site-2', 'OK')]" in logs["site-0"]
        else:
            assert "replies: []" in logs["site-0"]


@pytest.mark.parametrize(
    "run_args",
    [
        'protocol="memory"',
        'protocol="unix"',
        'protocol="grpc"',
        'protocol="grpc", tls="tls"',
        'protocol="grpc", tls="mtls"',
        'protocol="unix", tls="mtls"',
        'protocol="unix", direct_p2p=True',
        'protocol="grpc", tls="mtls", direct_p2p=True',
    ],
)
def test_six_messages_over_every_protocol(tmp_path, run_args):
    proc, logs = run_seed(tmp_path, run_args=run_args)
    assert len(received_lines(proc.stderr)) == 6, proc.stderr[-3000:]
    for site in ("site-0", "site-1", "site-2"):
        assert len(received_lines(logs[site])) == 2
    assert "replies: [('site-1', 'OK'), ('site-2', 'OK')]" in logs["site-0"]


def test_exercise_targets_none_reaches_the_server_without_a_handler(tmp_path):
    proc, logs = run_seed(tmp_path, targets_none=True)
    assert len(received_lines(proc.stderr)) == 6
    assert "no aux handler for topic 'hello' (request from site-0)" in logs["server"]
    assert "replies: [('server', 'TOPIC_UNKNOWN'), ('site-1', 'OK'), ('site-2', 'OK')]" in logs["site-0"]


def test_exercise_solved_with_a_server_handler(tmp_path):
    proc, logs = run_seed(tmp_path, targets_none=True, server_handler=True)
    assert len(received_lines(proc.stderr)) == 6
    assert logs["server"].count("Server received message from") == 3
    assert "replies: [('server', 'OK'), ('site-1', 'OK'), ('site-2', 'OK')]" in logs["site-0"]
