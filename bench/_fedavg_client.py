"""The Client API script of bench/fedavg_round.py: no training, it sends back what it received (plus nothing)."""

import flarelite.client as flare

flare.init()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    flare.send(flare.FLModel(params=model.params, meta={"NUM_STEPS_CURRENT_ROUND": 1}))
