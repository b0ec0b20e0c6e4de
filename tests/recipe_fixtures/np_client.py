"""A hello-numpy style training script: adds --step to every weight each round and logs the mean to TensorBoard."""

import argparse
import time

import numpy as np

import flarelite.client as flare
from flarelite.app_common.np.constants import NPConstants
from flarelite.client.tracking import SummaryWriter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--step", type=float, default=1.0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds of 'training' per round")
    args = parser.parse_args()

    flare.init()
    site_name = flare.system_info()["site_name"]
    summary_writer = SummaryWriter()
    while flare.is_running():
        input_model = flare.receive()
        params = input_model.params[NPConstants.NUMPY_KEY]
        time.sleep(args.sleep)
        new_params = params + args.step
        mean = np.mean(new_params)
        print(f"{site_name}: round {input_model.current_round}, weight mean {mean}")
        summary_writer.add_scalar(tag="weight_mean", scalar=mean, global_step=input_model.current_round)
        flare.send(
            flare.FLModel(
                params={NPConstants.NUMPY_KEY: new_params},
                params_type=flare.ParamsType.FULL,
                metrics={"weight_mean": mean},
                current_round=input_model.current_round,
                meta={"NUM_STEPS_CURRENT_ROUND": args.step},
            )
        )


if __name__ == "__main__":
    main()
