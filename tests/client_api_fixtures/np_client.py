"""A numpy Client API script: adds 1 to ``x``, prints, logs a metric (tests/test_script_runner.py)."""

import argparse
import logging
import threading

import flarelite.client as flare
from flarelite.client.tracking import SummaryWriter

parser = argparse.ArgumentParser()
parser.add_argument("--tag", default="none")
args = parser.parse_args()

flare.init()
site = flare.get_site_name()
print(f"hello from {site} tag={args.tag}")
worker = threading.Thread(target=lambda: print(f"thread print from {site}"))
worker.start()
worker.join()
logging.getLogger("np_client").warning(f"logged by {site}")  # lands in the site log too
writer = SummaryWriter()
while flare.is_running():
    model = flare.receive()
    assert flare.get_site_name() == site, (flare.get_site_name(), site)
    x = model.params["x"]
    print(f"{site} round {model.current_round} task {flare.get_task_name()}")
    writer.add_scalar("x_mean", float(x.mean()), global_step=model.current_round)
    writer.add_scalar("bad_metric", "not a number")  # logged and dropped by the executor, never raised here
    flare.send(
        flare.FLModel(
            params={"x": x + 1},
            metrics={"site": int(site.rsplit("-", 1)[-1])},
            current_round=model.current_round,
            meta={"NUM_STEPS_CURRENT_ROUND": 3},
        )
    )
print(f"{site} done")
print(f"{site} last words without a newline", end="")  # must still reach the site log
