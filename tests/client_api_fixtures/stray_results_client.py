"""An external script that first sends RESULT and ACCEPTED messages for tasks it was never given, then serves."""

import numpy as np

import flarelite.client as flare
from flarelite.apis.shareable import Shareable
from flarelite.client.channel import Msg

ctx = flare.init()
channel = ctx.api.exchange.channel
for i in range(300):
    channel.send(Msg.RESULT, {"task_id": f"stray-{i}", "data": Shareable({"pad": np.ones(1024)})})
    channel.send(Msg.ACCEPTED, {"task_id": f"stray-{i}"})
flare.log("strays_sent", 1.0, flare.AnalyticsDataType.SCALAR)  # the site reads its messages in order
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={"w": model.params["w"] + 1}))
