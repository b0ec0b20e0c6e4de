"""A script that never calls flare.init(): it sleeps until the site gives up on it."""

import time

print("NO-INIT: sleeping", flush=True)
time.sleep(120)
