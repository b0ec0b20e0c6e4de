"""bench/fedavg_round.py's job, run with NVFlare 2.9.0 (``--nvflare PYTHON``): the same three files with the import
root ``flarelite`` changed to ``nvflare``, run by that interpreter; prints the mean seconds per round (rounds 2..).

    PYTHON bench/_nvflare_round.py MB SITES ROUNDS
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    mb, sites, rounds = (int(a) for a in sys.argv[1:4])
    with tempfile.TemporaryDirectory(prefix="nvflare_round_") as tmp:
        for name in ("_fedavg_components.py", "_fedavg_client.py"):
            with open(os.path.join(HERE, name)) as f:
                text = f.read().replace("flarelite", "nvflare")
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        sys.path.insert(0, tmp)
        from _fedavg_components import BenchPersistor, RoundClock  # the nvflare port
        from nvflare.app_common.workflows.fedavg import FedAvg
        from nvflare.job_config.api import FedJob
        from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

        job = FedJob(name="fedavg_round", min_clients=sites)
        job.to_server(FedAvg(num_clients=sites, num_rounds=rounds, persistor_id="persistor"))
        job.to_server(BenchPersistor(size_mb=mb), id="persistor")
        job.to_server(RoundClock(), id="round_clock")
        job.to_clients(ScriptRunner(os.path.join(tmp, "_fedavg_client.py"), framework=FrameworkType.NUMPY))
        ws = os.path.join(tmp, "ws")
        job.simulator_run(ws, n_clients=sites)
        (path,) = glob.glob(os.path.join(ws, "**", "rounds.json"), recursive=True)
        with open(path) as f:
            clock = json.load(f)
        shutil.rmtree(ws, ignore_errors=True)
    spans = [end - start for start, end in zip(clock["starts"], clock["ends"])]
    print(json.dumps(sum(spans[1:]) / len(spans[1:]) if len(spans) > 1 else spans[0]))


if __name__ == "__main__":
    main()
