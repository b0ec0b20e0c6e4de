"""A script that answers every task correctly, then exits with status 5."""

import sys

import flarelite.client as flare

flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={"x": model.params["x"] + 1}, current_round=model.current_round))
print("EXIT-NONZERO: leaving with status 5", file=sys.stderr, flush=True)
sys.exit(5)
