"""swarm: swarm learning, a decentralized FedAvg with no central aggregation, on scikit-learn's digits.

Every round each site trains the model on its own slice of the data (the same MLP, data split and SGD step
as jobs/fedavg), then replaces its weights with a weighted average of its own and its neighbours' weights
(Metropolis-Hastings weights of the network, so the sites' models are pulled towards the network average).
The weights travel between the sites through aux, with ``SyncAlgorithmExecutor._exchange_values``; the
server's ``DistOptController`` only tells each site its neighbours and starts the rounds.

Each site evaluates its own model on the held-out test split jobs/fedavg's server uses and writes
``metrics.csv`` (round, train loss, test accuracy and loss before and after mixing, seconds) into its own
folder of the workspace (``fl_ctx.get_run_dir()``, i.e. ``WS/<site>``), and ``swarm_model.pt`` at the end.

This file is the job's custom code: it is shipped to the sites on its own, so it copies what it needs from
jobs/fedavg/modules.py rather than importing it.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import torch
from torch import nn

from flarelite.apis.event_type import EventType
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal
from flarelite.app_opt.p2p.executors import AlgorithmStopped, SyncAlgorithmExecutor
from flarelite.app_opt.p2p.utils.metrics import MetricsWriter

DATA_SEED = 0  # the same permutation as jobs/fedavg: the same site slices and the same test split
TEST_FRACTION = 0.2
METRICS_FILE = "metrics.csv"
MODEL_FILE = "swarm_model.pt"


# the model and the data (as in jobs/fedavg/modules.py) ---------------------------------------------------
class DigitsNet(nn.Module):
    """A small MLP for 8x8 digit images: 64 inputs, one hidden layer, 10 classes."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Return the model's state dict as numpy arrays (what travels between the sites)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy arrays into the model (every parameter must be present, with its shape)."""
    model.load_state_dict({name: torch.tensor(np.asarray(value)) for name, value in weights.items()})


def initial_model(seed: int) -> DigitsNet:
    """Return a DigitsNet whose initial weights depend only on ``seed`` (the same on every site).

    Drawn from a private ``torch.Generator`` with the distribution of ``nn.Linear``'s default initialization
    (uniform in +-1/sqrt(fan_in)), not from the global RNG: with ``--protocol memory`` all sites are threads
    of one process, and seeding the shared global RNG would race.
    """
    generator = torch.Generator().manual_seed(seed)
    model = DigitsNet()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return model


def sgd_step(model: nn.Module, lr: float) -> None:
    """One plain SGD step on the gradients in ``model``.

    Written out rather than ``torch.optim.SGD``: constructing the first torch optimizer in a process imports
    ``torch._dynamo`` (about 2 s of CPU per site process), which would dominate this small job's run time.
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)


def _digits() -> tuple[np.ndarray, np.ndarray, int]:
    """All digits, shuffled by the fixed permutation; returns (x, y, number of training samples)."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(DATA_SEED).permutation(len(y))
    x = (x[order] / 16.0).astype(np.float32)  # pixel values are 0..16
    y = y[order].astype(np.int64)
    return x, y, len(y) - int(round(TEST_FRACTION * len(y)))


def load_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test data (no site trains on it); the same as jobs/fedavg's server evaluates on."""
    x, y, n_train = _digits()
    return x[n_train:], y[n_train:]


def load_site_split(site_index: int, num_sites: int, non_iid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``site_index`` (1-based) of ``num_sites`` equal slices of the training data (as jobs/fedavg)."""
    if not 1 <= site_index <= num_sites:
        raise ValueError(f"site index {site_index} is outside 1..{num_sites}; check the executor's num_sites")
    x, y, n_train = _digits()
    x, y = x[:n_train], y[:n_train]
    if non_iid:
        by_label = np.argsort(y, kind="stable")
        x, y = x[by_label], y[by_label]
    part = np.array_split(np.arange(n_train), num_sites)[site_index - 1]
    return x[part], y[part]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy loss) of ``model`` on ``x``, ``y``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return accuracy, loss


# the sites -------------------------------------------------------------------------------------------
class SwarmExecutor(SyncAlgorithmExecutor):
    """Swarm learning on one site: each round, local SGD epochs, then a gossip average with the neighbours.

    The controller's ``config.extra`` must hold ``rounds``; it may also set ``lr``, ``local_epochs``,
    ``batch_size`` and ``mixing_steps`` (gossip exchanges per round, default 1), which override this
    executor's values. All sites start from the same model (``initial_model(model_seed)``), as in
    FedAvg, where every site starts from the server's initial weights.

    Parameters:
        num_sites: how many sites share the training data; site ``site-N`` trains on slice N.
        lr: SGD learning rate.
        local_epochs: passes over the site's data per round.
        batch_size: mini-batch size.
        seed: seed of the batch order (each site adds its index).
        model_seed: seed of the initial model, the same on every site.
        non_iid: give each site a label-sorted slice (a few classes each) instead of a random one.
        sync_timeout: seconds to wait for a neighbour's weights (see SyncAlgorithmExecutor).
    """

    def __init__(
        self,
        num_sites: int = 3,
        lr: float = 0.3,
        local_epochs: int = 1,
        batch_size: int = 32,
        seed: int = 0,
        model_seed: int = 0,
        non_iid: bool = False,
        sync_timeout: float = 30,
    ) -> None:
        super().__init__(sync_timeout=sync_timeout)
        if local_epochs < 1 or batch_size < 1 or num_sites < 1:
            raise ValueError(
                f"num_sites, local_epochs and batch_size must be >= 1, got {num_sites}, {local_epochs}, {batch_size}"
            )
        self.num_sites = num_sites
        self.lr = lr
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.model_seed = model_seed
        self.non_iid = non_iid
        self.model: DigitsNet | None = None
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)  # registers the aux handler of the neighbours' weights
        if event_type == EventType.START_RUN:  # load the data before the first round (an error fails the run)
            self._setup(fl_ctx)

    def _setup(self, fl_ctx: FLContext) -> None:
        site = fl_ctx.get_identity_name()
        match = re.fullmatch(r"site-(\d+)", site)
        if match is None:
            raise ValueError(f"SwarmExecutor needs sites named site-1..site-{self.num_sites}, not {site!r}")
        index = int(match.group(1))
        torch.set_num_threads(1)  # a tiny model: more threads only compete with the other sites for the cores
        x, y = load_site_split(index, self.num_sites, self.non_iid)
        self._data = (torch.from_numpy(x), torch.from_numpy(y))
        test_x, test_y = load_test_split()
        self._test = (torch.from_numpy(test_x), torch.from_numpy(test_y))
        self._generator = torch.Generator().manual_seed(self.seed + index)
        labels = sorted(set(y.tolist()))
        self.log_info(fl_ctx, f"{len(y)} training samples (slice {index} of {self.num_sites}), labels {labels}")

    # one round's pieces ------------------------------------------------------------------------------
    def _train(self, lr: float, local_epochs: int, batch_size: int, abort_signal: Signal) -> float:
        """Train ``self.model`` locally; return the mean loss over the last epoch."""
        assert self.model is not None and self._data is not None
        model = self.model
        model.train()
        x, y = self._data
        epoch_loss = 0.0
        for _ in range(local_epochs):
            epoch_loss = 0.0
            order = torch.randperm(len(y), generator=self._generator)
            for start in range(0, len(y), batch_size):
                if abort_signal.triggered:
                    raise AlgorithmStopped("aborted while training", ReturnCode.TASK_ABORTED)
                batch = order[start : start + batch_size]
                model.zero_grad()
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                loss.backward()
                sgd_step(model, lr)
                epoch_loss += loss.item() * len(batch)
        return epoch_loss / len(y)

    def _mix(self, fl_ctx: FLContext, iteration: int, own_weight: float) -> None:
        """Send this site's weights to its neighbours and replace them by the weighted average with theirs."""
        assert self.model is not None
        mine = get_weights(self.model)
        theirs = self._exchange_values(fl_ctx, value=mine, iteration=iteration)
        mixed = {name: own_weight * value.astype(np.float64) for name, value in mine.items()}
        for neighbor in self.neighbors:
            value = theirs[neighbor.id]
            if set(value) != set(mine):
                raise self._fail(
                    fl_ctx, f"{neighbor.id} sent weights for {sorted(value)}, this site's model has {sorted(mine)}"
                )
            weight = float(neighbor.weight or 0.0)  # _require_weights checked that every weight is set
            for name in mixed:
                mixed[name] += weight * np.asarray(value[name], dtype=np.float64)
        set_weights(self.model, {name: value.astype(np.float32) for name, value in mixed.items()})

    # the algorithm -----------------------------------------------------------------------------------
    def run_algorithm(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Run ``rounds`` rounds of local training and neighbour averaging, logging and recording each."""
        rounds = int(self._extra(shareable, "rounds"))
        lr = float(self._extra(shareable, "lr", self.lr, required=False))
        local_epochs = int(self._extra(shareable, "local_epochs", self.local_epochs, required=False))
        batch_size = int(self._extra(shareable, "batch_size", self.batch_size, required=False))
        mixing_steps = int(self._extra(shareable, "mixing_steps", 1, required=False))
        if rounds < 1 or local_epochs < 1 or batch_size < 1 or mixing_steps < 1:
            raise AlgorithmStopped(
                f"rounds, local_epochs, batch_size and mixing_steps must be >= 1, got "
                f"{rounds}, {local_epochs}, {batch_size}, {mixing_steps}",
                ReturnCode.BAD_TASK_DATA,
            )
        own_weight = self._require_weights()
        assert self._test is not None, "set up at START_RUN"
        self.model = initial_model(self.model_seed)

        writer = MetricsWriter(
            os.path.join(self._site_dir(fl_ctx), METRICS_FILE),
            ["round", "train_loss", "local_accuracy", "test_accuracy", "test_loss", "seconds"],
        )
        try:
            accuracy, loss = evaluate(self.model, *self._test)
            writer.write(round=0, test_accuracy=f"{accuracy:.4f}", test_loss=f"{loss:.4f}", seconds=0)
            self.log_info(fl_ctx, f"round 0/{rounds} (initial model): accuracy {accuracy:.3f}, loss {loss:.3f}")
            for current_round in range(1, rounds + 1):
                if abort_signal.triggered:
                    return
                started = time.monotonic()
                train_loss = self._train(lr, local_epochs, batch_size, abort_signal)
                local_accuracy, _ = evaluate(self.model, *self._test)
                for step in range(mixing_steps):
                    self._mix(fl_ctx, (current_round - 1) * mixing_steps + step, own_weight)
                accuracy, loss = evaluate(self.model, *self._test)
                seconds = time.monotonic() - started
                writer.write(
                    round=current_round,
                    train_loss=f"{train_loss:.4f}",
                    local_accuracy=f"{local_accuracy:.4f}",
                    test_accuracy=f"{accuracy:.4f}",
                    test_loss=f"{loss:.4f}",
                    seconds=f"{seconds:.3f}",
                )
                self.log_info(
                    fl_ctx,
                    f"round {current_round}/{rounds}: accuracy {accuracy:.3f}, loss {loss:.3f} "
                    f"(local model before mixing: accuracy {local_accuracy:.3f}; train loss {train_loss:.3f}; "
                    f"{seconds:.2f}s)",
                )
        finally:
            writer.close()

    def _post_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Save the site's final model as ``swarm_model.pt`` in its folder."""
        if self.model is None or abort_signal.triggered:
            return
        path = os.path.join(self._site_dir(fl_ctx), MODEL_FILE)
        torch.save(self.model.state_dict(), path)
        self.log_info(fl_ctx, f"swarm learning done; model saved to {path}")
