"""A hello-pt style training script for TinyNet: adds 1 to every parameter each round, reports a rising accuracy."""

import torch
from tiny_net import TinyNet

import flarelite.client as flare
from flarelite.client.tracking import SummaryWriter


def main() -> None:
    flare.init()
    net = TinyNet()
    summary_writer = SummaryWriter()
    while flare.is_running():
        input_model = flare.receive()
        net.load_state_dict(input_model.params)
        accuracy = 0.5 + 0.1 * input_model.current_round  # "evaluation" of the received global model
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        summary_writer.add_scalar(tag="accuracy", scalar=accuracy, global_step=input_model.current_round)
        flare.send(
            flare.FLModel(
                params=net.state_dict(),
                metrics={"accuracy": accuracy},
                meta={"NUM_STEPS_CURRENT_ROUND": 1},
            )
        )


if __name__ == "__main__":
    main()
