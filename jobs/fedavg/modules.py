"""fedavg: classic server-side federated averaging of a small torch model on scikit-learn's digits.

The server's ``FedAvgController`` scatters the global weights in a "train" task, gathers each site's
updated weights in ``result_received_cb``, averages them weighted by each site's number of training samples
(``NUM_STEPS_CURRENT_ROUND``), and evaluates the new global model on a held-out test split. Each site's
``TrainExecutor`` trains the model on its own slice of the data for a few local epochs.

Both write CSV files into their own folder of the workspace (``fl_ctx.get_run_dir()``, i.e. ``WS/<site>``):
the server ``metrics.csv`` (test accuracy and loss per round), each site ``train_loss.csv``.
"""

from __future__ import annotations

import csv
import os
import re
import threading
import time

import numpy as np
import torch
from torch import nn

from flarelite.apis.controller_spec import ClientTask, Task
from flarelite.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal

TRAIN_TASK = "train"
DATA_SEED = 0  # the same permutation everywhere, so that the sites' slices and the server's test split never overlap
TEST_FRACTION = 0.2


# the model and the data, shared by the server and the sites ---------------------------------------------
class DigitsNet(nn.Module):
    """A small MLP for 8x8 digit images: 64 inputs, one hidden layer, 10 classes."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Return the model's state dict as numpy arrays (what travels in the WEIGHTS DXO)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy arrays into the model (every parameter must be present, with its shape)."""
    model.load_state_dict({name: torch.tensor(np.asarray(value)) for name, value in weights.items()})


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
    # imported here, not at the top: job.py, which only builds the job, then need not load scikit-learn
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(DATA_SEED).permutation(len(y))
    x = (x[order] / 16.0).astype(np.float32)  # pixel values are 0..16
    y = y[order].astype(np.int64)
    return x, y, len(y) - int(round(TEST_FRACTION * len(y)))


def load_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test data the server evaluates the global model on (no site trains on it)."""
    x, y, n_train = _digits()
    return x[n_train:], y[n_train:]


def load_site_split(site_index: int, num_sites: int, non_iid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``site_index`` (1-based) of ``num_sites`` equal slices of the training data.

    IID: slices of the shuffled data. Non-IID: the training data sorted by label first, so each site sees
    only a few classes.
    """
    if not 1 <= site_index <= num_sites:
        raise ValueError(f"site index {site_index} is outside 1..{num_sites}; check the executor's num_sites")
    x, y, n_train = _digits()
    x, y = x[:n_train], y[:n_train]
    if non_iid:
        by_label = np.argsort(y, kind="stable")
        x, y = x[by_label], y[by_label]
    part = np.array_split(np.arange(n_train), num_sites)[site_index - 1]
    return x[part], y[part]


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy loss) of ``model`` on ``x``, ``y``."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        target = torch.from_numpy(y)
        loss = nn.functional.cross_entropy(logits, target).item()
        accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return accuracy, loss


class _CsvLog:
    """Append rows to a CSV file, writing the header first and flushing every row (readable while running)."""

    def __init__(self, path: str, header: list[str]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(header)

    def write(self, row: list) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(row)


# the server -----------------------------------------------------------------------------------------
class FedAvgController(Controller):
    """Scatter and gather: each round, broadcast the global weights, average the sites' results, evaluate.

    Parameters:
        num_rounds: how many rounds to run.
        min_clients: the fewest successful results a round needs; with fewer the run fails.
        wait_time_after_min_received: seconds to wait for more results once ``min_clients`` arrived
            (the round ends at once when every site answered).
        train_timeout: seconds a site may take to train (0: no limit).
        seed: seed of the initial global model.
    """

    def __init__(
        self,
        num_rounds: int = 10,
        min_clients: int = 1,
        wait_time_after_min_received: float = 10,
        train_timeout: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        if min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {min_clients}")
        self.num_rounds = num_rounds
        self.min_clients = min_clients
        self.wait_time_after_min_received = wait_time_after_min_received
        self.train_timeout = train_timeout
        self.seed = seed
        self._lock = threading.Lock()
        self._current_round = 0
        self._sums: dict[str, np.ndarray] = {}
        self._total_weight = 0.0
        self._contributors: list[str] = []

    def start_controller(self, fl_ctx: FLContext) -> None:
        torch.set_num_threads(1)  # a tiny model: more threads only compete with the sites for the cores
        torch.manual_seed(self.seed)
        self.model = DigitsNet()
        self.test_x, self.test_y = load_test_split()
        self.metrics = _CsvLog(
            os.path.join(fl_ctx.get_run_dir() or os.getcwd(), "metrics.csv"),
            ["round", "test_accuracy", "test_loss", "num_clients", "num_samples", "seconds"],
        )

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        accuracy, loss = evaluate(self.model, self.test_x, self.test_y)
        self.metrics.write([0, f"{accuracy:.4f}", f"{loss:.4f}", 0, 0, 0])
        self.log_info(fl_ctx, f"round 0/{self.num_rounds} (initial model): accuracy {accuracy:.3f}, loss {loss:.3f}")
        for current_round in range(1, self.num_rounds + 1):
            if abort_signal.triggered:
                return
            started = time.monotonic()
            with self._lock:
                self._current_round = current_round
                self._sums, self._total_weight, self._contributors = {}, 0.0, []
            dxo = DXO(
                DataKind.WEIGHTS,
                get_weights(self.model),
                meta={MetaKey.CURRENT_ROUND: current_round, MetaKey.TOTAL_ROUNDS: self.num_rounds},
            )
            task = Task(
                name=TRAIN_TASK,
                data=dxo.to_shareable(),
                timeout=self.train_timeout,
                result_received_cb=self._accept_result,
            )
            self.broadcast_and_wait(
                task,
                fl_ctx,
                min_responses=self.min_clients,
                wait_time_after_min_received=self.wait_time_after_min_received,
                abort_signal=abort_signal,
            )
            if abort_signal.triggered:
                return
            with self._lock:
                sums, total, contributors = self._sums, self._total_weight, list(self._contributors)
                self._current_round = 0  # results that arrive from now on are late
            if len(contributors) < self.min_clients:
                self.system_panic(
                    f"round {current_round}: {len(contributors)} usable results ({contributors}), fewer than "
                    f"min_clients={self.min_clients}; see the sites' logs",
                    fl_ctx,
                )
                return
            set_weights(self.model, {name: s / total for name, s in sums.items()})
            accuracy, loss = evaluate(self.model, self.test_x, self.test_y)
            seconds = time.monotonic() - started
            self.metrics.write(
                [current_round, f"{accuracy:.4f}", f"{loss:.4f}", len(contributors), int(total), f"{seconds:.2f}"]
            )
            self.log_info(
                fl_ctx,
                f"round {current_round}/{self.num_rounds}: accuracy {accuracy:.3f}, loss {loss:.3f} "
                f"({len(contributors)} sites, {int(total)} samples, {seconds:.1f}s)",
            )
        path = os.path.join(os.path.dirname(self.metrics.path), "global_model.pt")
        torch.save(self.model.state_dict(), path)
        self.log_info(fl_ctx, f"FedAvg done: final accuracy {accuracy:.3f}; model saved to {path}")

    def _accept_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        """Add one site's weights to the running weighted sum of this round."""
        site, result = client_task.client.name, client_task.result
        rc = result.get_return_code() if result is not None else None
        if result is None or rc != ReturnCode.OK:
            self.log_warning(fl_ctx, f"{site} returned {rc}; its result is left out of the average")
            return
        try:
            dxo = from_shareable(result)
        except ValueError as exc:
            self.log_warning(fl_ctx, f"{site} sent a result without weights ({exc}); left out")
            return
        n = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        if dxo.data_kind != DataKind.WEIGHTS or not isinstance(n, (int, float)) or n <= 0:
            self.log_warning(
                fl_ctx, f"{site} sent {dxo.data_kind} with {MetaKey.NUM_STEPS_CURRENT_ROUND}={n!r}; left out"
            )
            return
        with self._lock:
            if dxo.get_meta_prop(MetaKey.CURRENT_ROUND) != self._current_round:
                self.log_warning(fl_ctx, f"{site} sent a result for round {dxo.get_meta_prop(MetaKey.CURRENT_ROUND)}")
                return
            for name, value in dxo.data.items():
                weighted = np.asarray(value, dtype=np.float64) * n
                self._sums[name] = self._sums[name] + weighted if name in self._sums else weighted
            self._total_weight += n
            self._contributors.append(site)
        self.log_debug(fl_ctx, f"round {self._current_round}: got {n} samples' worth of weights from {site}")

    def process_result_of_unknown_task(
        self, client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        self.log_info(fl_ctx, f"late result of {task_name!r} from {client.name} ignored (its round is over)")


# the sites ------------------------------------------------------------------------------------------
class TrainExecutor(Executor):
    """On "train": load the global weights, train locally, return the new weights with the sample count.

    Parameters:
        num_sites: how many sites share the training data; site ``site-N`` trains on slice N.
        lr: SGD learning rate.
        local_epochs: passes over the site's data per round.
        batch_size: mini-batch size.
        seed: seed of the batch order (each site adds its index).
        non_iid: give each site a label-sorted slice (a few classes each) instead of a random one.
    """

    def __init__(
        self,
        num_sites: int = 3,
        lr: float = 0.3,
        local_epochs: int = 1,
        batch_size: int = 32,
        seed: int = 0,
        non_iid: bool = False,
    ) -> None:
        super().__init__()
        if local_epochs < 1 or batch_size < 1 or num_sites < 1:
            raise ValueError(
                f"num_sites, local_epochs and batch_size must be >= 1, got {num_sites}, {local_epochs}, {batch_size}"
            )
        self.num_sites = num_sites
        self.lr = lr
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.non_iid = non_iid
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._losses: _CsvLog | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:  # load the data before the first round (an error fails the run)
            self._setup(fl_ctx)

    def _setup(self, fl_ctx: FLContext) -> None:
        site = fl_ctx.get_identity_name()
        match = re.fullmatch(r"site-(\d+)", site)
        if match is None:
            raise ValueError(f"TrainExecutor needs sites named site-1..site-{self.num_sites}, not {site!r}")
        index = int(match.group(1))
        torch.set_num_threads(1)  # a tiny model: more threads only compete with the other sites for the cores
        x, y = load_site_split(index, self.num_sites, self.non_iid)
        self._data = (torch.from_numpy(x), torch.from_numpy(y))
        self._generator = torch.Generator().manual_seed(self.seed + index)
        self._losses = _CsvLog(
            os.path.join(fl_ctx.get_run_dir() or os.getcwd(), "train_loss.csv"),
            ["round", "train_loss", "num_samples", "seconds"],
        )
        labels = sorted(set(y.tolist()))
        self.log_info(fl_ctx, f"{len(y)} training samples (slice {index} of {self.num_sites}), labels {labels}")

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != TRAIN_TASK:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            dxo = from_shareable(shareable)
        except ValueError as exc:
            self.log_error(fl_ctx, f"task data holds no weights: {exc}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        current_round = dxo.get_meta_prop(MetaKey.CURRENT_ROUND)
        total_rounds = dxo.get_meta_prop(MetaKey.TOTAL_ROUNDS)

        started = time.monotonic()
        model = DigitsNet()
        set_weights(model, dxo.data)
        model.train()
        assert self._data is not None and self._losses is not None, "set up at START_RUN"
        x, y = self._data
        for _ in range(self.local_epochs):
            epoch_loss = 0.0
            order = torch.randperm(len(y), generator=self._generator)
            for start in range(0, len(y), self.batch_size):
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                batch = order[start : start + self.batch_size]
                model.zero_grad()
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                loss.backward()
                sgd_step(model, self.lr)
                epoch_loss += loss.item() * len(batch)
        train_loss = epoch_loss / len(y)  # mean loss over the last local epoch
        seconds = time.monotonic() - started
        self._losses.write([current_round, f"{train_loss:.4f}", len(y), f"{seconds:.3f}"])
        self.log_info(fl_ctx, f"round {current_round}/{total_rounds}: train loss {train_loss:.3f}")
        return DXO(
            DataKind.WEIGHTS,
            get_weights(model),
            meta={MetaKey.NUM_STEPS_CURRENT_ROUND: len(y), MetaKey.CURRENT_ROUND: current_round},
        ).to_shareable()
