"""Started through the external backend's launcher by a helper process that the test then kills."""

import sys
import time

from flarelite.app_common.executors.client_api.external_process_backend import _launch_argv, _spawner

child = _spawner.popen(_launch_argv([sys.executable, "-c", "import time; time.sleep(120)"]))
print(child.pid, flush=True)
time.sleep(120)
