"""hello-pt's training script: a centralized PyTorch loop made federated with the Client API.

Each site trains on its own slice of scikit-learn's digits (no download), reports loss and accuracy to
TensorBoard through ``SummaryWriter``, and answers ``train``, ``validate`` and ``submit_model`` tasks.
"""

import argparse

import numpy as np
import torch
from model import SimpleNetwork
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import flarelite.client as flare
from flarelite.client.tracking import SummaryWriter


def load_data(site_name: str, n_sites: int, seed: int = 0):
    """This site's training slice and the shared test set, as tensors."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    index = int(site_name.rsplit("-", 1)[-1]) - 1 if site_name.rsplit("-", 1)[-1].isdigit() else 0
    part = np.array_split(np.arange(len(x_train)), n_sites)[index % n_sites]
    as_t = torch.from_numpy
    return as_t(x_train[part]), as_t(y_train[part]), as_t(x_test), as_t(y_test)


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``net`` on ``(x, y)``."""
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--n_sites", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    flare.init()
    site_name = flare.system_info()["site_name"]
    x_train, y_train, x_test, y_test = load_data(site_name, args.n_sites)
    print(f"{site_name}: {len(x_train)} training images, {len(x_test)} test images")
    net = SimpleNetwork()
    loss_fn = nn.CrossEntropyLoss()
    summary_writer = SummaryWriter()
    steps_done = 0
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        if flare.is_submit_model():  # cross-site evaluation asks for this site's model: the task carries none
            flare.send(flare.FLModel(params=net.state_dict()))
            continue
        net.load_state_dict(input_model.params)
        accuracy = evaluate(net, x_test, y_test)
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"accuracy": accuracy}))
            continue
        print(f"{site_name}: round {input_model.current_round}, global model accuracy {accuracy:.3f}")
        summary_writer.add_scalar(tag="global_model_accuracy", scalar=accuracy, global_step=input_model.current_round)
        optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
        net.train()
        steps = 0
        for _ in range(args.epochs):
            order = torch.randperm(len(x_train))
            for start in range(0, len(order), args.batch_size):
                batch = order[start : start + args.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(net(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                steps += 1
                summary_writer.add_scalar(tag="train_loss", scalar=float(loss), global_step=steps_done + steps)
        steps_done += steps
        flare.send(
            flare.FLModel(
                params=net.state_dict(),
                metrics={"accuracy": accuracy},
                meta={"NUM_STEPS_CURRENT_ROUND": steps},
            )
        )


if __name__ == "__main__":
    main()
