"""A script that freezes itself (SIGSTOP) on its first task: no heartbeat comes from it any more."""

import os
import signal

import flarelite.client as flare

flare.init()
model = flare.receive()
print("HANG: stopping myself", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
