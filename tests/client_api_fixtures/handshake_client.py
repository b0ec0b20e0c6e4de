"""An external script that first knocks with a wrong token (and with garbage), then joins properly."""

import json
import os
import socket
import struct

import flarelite.client as flare
from flarelite.client.channel import Channel, Msg

with open(os.environ["FLARELITE_CLIENT_API_BOOTSTRAP"]) as f:
    boot = json.load(f)

for attempt in ("garbage", "wrong-token"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(boot["socket"])
    if attempt == "garbage":
        s.sendall(b"GET / HTTP/1.1\r\n" + struct.pack("<Q", 1 << 62) * 4)
    else:
        Channel(s, peer="site").send(Msg.HELLO, {"token": "0" * 64, "pid": os.getpid()})
    s.settimeout(10)
    try:
        closed = s.recv(1) == b""
    except OSError:
        closed = True
    print(f"{attempt} connection closed by the site: {closed}", flush=True)
    s.close()

flare.init()
while flare.is_running():
    model = flare.receive()
    flare.log("loss", 0.5, flare.AnalyticsDataType.SCALAR, global_step=1)
    flare.send(flare.FLModel(params={k: v * 2 for k, v in model.params.items()}))
print("handshake client done", flush=True)
