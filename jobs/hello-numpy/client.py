"""hello-numpy's training script: the Client API in a plain numpy loop (NVFlare's hello-numpy client, unchanged
but for the import root).

Each round it receives the global model, "trains" by adding 1 to every weight, logs the mean weight to
TensorBoard, and sends back the full weights or their difference (``--update_type diff``).
"""

import argparse

import numpy as np

import flarelite.client as flare
from flarelite.app_common.np.constants import NPConstants
from flarelite.client.tracking import SummaryWriter


def train(input_arr: np.ndarray) -> np.ndarray:
    """Pretend to train: every weight grows by one."""
    return input_arr + 1


def evaluate(input_arr: np.ndarray) -> dict:
    """The metric the server aggregates: the mean weight."""
    return {"weight_mean": float(np.mean(input_arr))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--update_type", choices=["full", "diff"], default="full")
    args = parser.parse_args()

    flare.init()
    site_name = flare.system_info()["site_name"]
    print(f"{site_name}: client API initialised")
    summary_writer = SummaryWriter()
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        print(f"{site_name}: round {input_model.current_round}")
        input_arr = input_model.params[NPConstants.NUMPY_KEY]
        output_arr = train(input_arr)
        metrics = evaluate(input_arr)
        summary_writer.add_scalar(
            tag="weight_mean", scalar=metrics["weight_mean"], global_step=input_model.current_round
        )
        if args.update_type == "diff":
            params, params_type = output_arr - input_arr, flare.ParamsType.DIFF
        else:
            params, params_type = output_arr, flare.ParamsType.FULL
        flare.send(
            flare.FLModel(
                params={NPConstants.NUMPY_KEY: params},
                params_type=params_type,
                metrics=metrics,
                current_round=input_model.current_round,
                meta={"NUM_STEPS_CURRENT_ROUND": 1},
            )
        )


if __name__ == "__main__":
    main()
