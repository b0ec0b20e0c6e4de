"""A Client API script that crashes on its first task, with a marker on stderr."""

import sys

import flarelite.client as flare

flare.init()
model = flare.receive()
print("CRASH-MARKER: about to fail", file=sys.stderr, flush=True)
raise RuntimeError("CRASH-MARKER boom")
