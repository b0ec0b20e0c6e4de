"""Components for tests/test_message_size_option.py: site-1 sends an aux request of ``nbytes`` to site-2.

Copied into a job's ``app/custom/`` folder (every site of a processes run imports them from there). The sender
writes the return code it got into ``result_file`` (an absolute path: in the processes mode a site cannot
report through module state).
"""

from __future__ import annotations

import json

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal


class SendOnceController(Controller):
    """One "send" task to site-1; the run succeeds when site-1 answers."""

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        task = Task(name="send", data=Shareable())
        self.send_and_wait(task, fl_ctx, targets=["site-1"], abort_signal=abort_signal)


class BigAuxExecutor(Executor):
    """site-1 sends ``nbytes`` to site-2 on topic "big" and records the return code; site-2 answers OK."""

    def __init__(self, nbytes: int, result_file: str) -> None:
        super().__init__()
        self.nbytes, self.result_file = nbytes, result_file

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler("big", self._answer)

    def _answer(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        return make_reply(ReturnCode.OK)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        request = DXO(DataKind.APP_DEFINED, {"blob": bytes(self.nbytes)}).to_shareable()
        replies = fl_ctx.get_engine().send_aux_request(["site-2"], "big", request, timeout=20, fl_ctx=fl_ctx)
        with open(self.result_file, "w", encoding="utf-8") as f:
            json.dump({name: reply.get_return_code() for name, reply in replies.items()}, f)
        return make_reply(ReturnCode.OK)
