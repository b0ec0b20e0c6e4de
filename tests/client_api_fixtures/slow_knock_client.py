"""An external script that first holds many half-sent connections to its site's socket, then joins properly."""

import json
import os
import socket
import time

import flarelite.client as flare

with open(os.environ["FLARELITE_CLIENT_API_BOOTSTRAP"]) as f:
    boot = json.load(f)

held = []
for _ in range(24):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(boot["socket"])
        s.sendall(b"FLCA\x01")  # half a prefix, then nothing: a slow-loris
    except OSError as exc:
        print(f"knock failed: {exc}", flush=True)
        s.close()
        continue
    held.append(s)
start = time.monotonic()
flare.init()
print(f"init took {time.monotonic() - start:.2f}s with {len(held)} knocks held", flush=True)
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={"w": model.params["w"] * 2}))
for s in held:
    s.close()
