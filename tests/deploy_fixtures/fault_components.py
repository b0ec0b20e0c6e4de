"""Components for the fault tests (copied into the job's custom/ folder). They talk to the test through files
in the folder named by the FAULT_DIR environment variable: markers they write, releases they wait for."""

import json
import os
import threading
import time

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import make_reply
from flarelite.runtime.frames import Kind

WAIT_LIMIT = 60.0  # no wait of a component outlives a broken test by more than this


def _path(name):
    return os.path.join(os.environ["FAULT_DIR"], name)


def mark(name, text=""):
    with open(_path(name) + ".tmp", "w") as f:
        f.write(text)
    os.replace(_path(name) + ".tmp", _path(name))


def wait_for(name, abort_signal=None):
    deadline = time.monotonic() + WAIT_LIMIT
    while not os.path.exists(_path(name)) and time.monotonic() < deadline:
        if abort_signal is not None and abort_signal.triggered:
            return False
        time.sleep(0.02)
    return os.path.exists(_path(name))


class RoundsController(Controller):
    """Broadcasts (or sends to site-2, or relays through every site: ``method``) ``rounds`` tasks (timeout
    ``task_timeout``, 0 = wait forever); after round r (r < rounds) it marks ``between_r`` and waits for ``go_r``
    when ``pause`` is set. Writes every round's outcome to rounds.json."""

    def __init__(self, rounds=1, task_timeout=0, pause=False, method="broadcast"):
        super().__init__()
        self.rounds = rounds
        self.task_timeout = task_timeout
        self.pause = pause
        self.method = method

    def control_flow(self, abort_signal, fl_ctx):
        outcome = []
        for r in range(1, self.rounds + 1):
            data = DXO(DataKind.APP_DEFINED, {"round": r}).to_shareable()
            task = Task(name="work", data=data, timeout=self.task_timeout)
            if self.method == "send":
                self.send_and_wait(task, fl_ctx, targets=["site-2"], abort_signal=abort_signal)
            elif self.method == "relay":
                self.relay_and_wait(task, fl_ctx, abort_signal=abort_signal)
            else:
                self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
            outcome.append(
                {
                    "status": task.completion_status.value if task.completion_status else None,
                    "results": {
                        ct.client.name: ct.result.get_return_code() if ct.result is not None else None
                        for ct in task.client_tasks
                    },
                }
            )
            mark("rounds.json", json.dumps(outcome))
            if self.pause and r < self.rounds:
                mark(f"between_{r}")
                if not wait_for(f"go_{r}", abort_signal):
                    return


class FaultExecutor(Executor):
    """Marks ``<site>.running`` (with its pid) and counts its runs in ``<site>.runs``; the sites in ``block``
    wait for ``release`` (or an abort); the site named ``site`` meets ``fault`` during its first task:

    - ``"replaced"``: its connection is replaced under it (in-memory runs): the result it sends is lost with the
      old connection, and its transport reconnects without the server ever seeing the old one go;
    - ``"drop"``: its connection drops during the task and comes back after it (in-memory runs);
    - ``"gone"``: its connection drops for good during the task (in-memory runs);
    - ``"die"``: it kills itself (SIGKILL) in the middle of its task; ``"die_all"``: every site does.
    """

    def __init__(self, site="site-2", fault="", block=()):
        super().__init__()
        self.site = site
        self.fault = fault
        self.block = list(block)
        self._faulted = False

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        engine = fl_ctx.get_engine()
        name = fl_ctx.get_identity_name()
        with open(_path(f"{name}.runs"), "a") as f:
            f.write(f"{task_name}\n")
        mark(f"{name}.running", str(os.getpid()))
        if name == self.site and not self._faulted:
            self._faulted = True
            if self.fault == "die" or self.fault == "die_all":
                os.kill(os.getpid(), 9)
            if self.fault == "replaced":
                self._replace_connection(engine)
            elif self.fault in ("drop", "gone"):
                engine.protocol.hub.disconnect(name)
                if self.fault == "drop":
                    threading.Timer(0.3, engine.protocol.hub.reconnect, args=(name,)).start()
        if self.fault == "die_all":
            os.kill(os.getpid(), 9)
        if name in self.block and not wait_for("release", abort_signal):
            return make_reply(ReturnCode.TASK_ABORTED)
        return make_reply(ReturnCode.OK)

    @staticmethod
    def _replace_connection(engine):
        protocol = engine.protocol
        send = protocol.send

        def lossy_send(target, frame, timeout=None):
            if frame.kind == Kind.RESULT:  # written to the old connection just as it was replaced: lost
                protocol.send = send
                engine.on_peer("server", False)
                threading.Timer(0.2, engine.on_peer, args=("server", True)).start()
                return
            send(target, frame, timeout)

        protocol.send = lossy_send
