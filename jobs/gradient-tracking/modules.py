"""The gradient-tracking job's data, model and executors: logistic regression on scikit-learn's digits.

Each site holds its own slice of the 1,797 8x8 digit images and fits the same multinomial logistic
regression (a torch ``Linear(64, 10)``). The local losses are scaled so that their average is exactly the
centralized objective: the mean cross-entropy over all the images plus ``L2 / 2 * ||weights||^2``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from flarelite.app_opt.p2p.executors import DGDExecutor, GTADAMExecutor, GTExecutor

NUM_FEATURES = 64
NUM_CLASSES = 10
L2 = 5e-2  # ridge penalty: makes the objective strongly convex, so its optimum is unique

# The model is tiny and several sites share the machine: one torch thread per process avoids CPU
# oversubscription (idle OpenMP threads spinning), which otherwise slows every site down several times.
torch.set_num_threads(1)


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Return all the digits as (features, labels), features standardized with the data set's statistics.

    The statistics are a fixed preprocessing step all sites agree on (as they would agree on a data format).
    """
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def site_indices(site_index: int, num_sites: int, seed: int = 0) -> np.ndarray:
    """Return the indices of the images held by site ``site_index`` (1-based): a shuffled, disjoint slice."""
    if not 1 <= site_index <= num_sites:
        raise ValueError(f"site_index must be in 1..{num_sites}, got {site_index}")
    order = np.random.default_rng(seed).permutation(len(load_digits().target))
    return np.array_split(order, num_sites)[site_index - 1]


def make_model() -> torch.nn.Module:
    """Return the model, initialized the same way everywhere."""
    torch.manual_seed(0)
    return torch.nn.Linear(NUM_FEATURES, NUM_CLASSES)


class RegularizedCrossEntropy(torch.nn.Module):
    """``scale * sum of cross-entropies + L2 / 2 * ||model.weight||^2`` (with ``scale = 1/N``: the objective)."""

    def __init__(self, model: torch.nn.Module, scale: float, l2: float = L2) -> None:
        super().__init__()
        self.model = model
        self.scale = scale
        self.l2 = l2

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        data_term = torch.nn.functional.cross_entropy(prediction, target, reduction="sum") * self.scale
        return data_term + 0.5 * self.l2 * (self.model.weight**2).sum()


def objective(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Return the centralized objective of ``model`` on ``(x, y)``: mean cross-entropy plus the ridge penalty."""
    with torch.no_grad():
        return float(RegularizedCrossEntropy(model, 1.0 / len(y))(model(x), y).item())


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Return the fraction of ``(x, y)`` that ``model`` classifies right."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).double().mean().item())


def local_problem(site_index: int, num_sites: int, seed: int = 0):
    """Return (model, loss, full-batch train loader) for one site.

    The site's loss is ``num_sites / N * (sum of its cross-entropies) + penalty``, so that the average of the
    sites' losses is the centralized objective even though the slices differ in size by one image.
    """
    x, y = load_data()
    idx = torch.as_tensor(site_indices(site_index, num_sites, seed))
    dataset = torch.utils.data.TensorDataset(x[idx], y[idx])
    # one batch of the whole slice, fetched with a single indexing (not sample by sample)
    batches = torch.utils.data.BatchSampler(
        torch.utils.data.SequentialSampler(dataset), batch_size=len(dataset), drop_last=False
    )
    loader = torch.utils.data.DataLoader(dataset, sampler=batches, batch_size=None)
    model = make_model()
    loss = RegularizedCrossEntropy(model, scale=num_sites / len(y))
    return model, loss, loader


class DigitsSlice:
    """Mixin: builds the site's model, loss and data slice and hands them to the algorithm's executor.

    Its ``__init__`` is the one FedJob records (site_index, num_sites, seed, sync_timeout).
    """

    def __init__(self, site_index: int, num_sites: int, seed: int = 0, sync_timeout: float = 10) -> None:
        self.site_index = site_index
        self.num_sites = num_sites
        self.seed = seed
        model, loss, loader = local_problem(site_index, num_sites, seed)
        super().__init__(model=model, loss=loss, train_dataloader=loader, sync_timeout=sync_timeout)  # type: ignore[call-arg]


class DigitsGTExecutor(DigitsSlice, GTExecutor):
    """Gradient tracking on this site's slice of the digits."""


class DigitsGTADAMExecutor(DigitsSlice, GTADAMExecutor):
    """GTAdam on this site's slice of the digits."""


class DigitsDGDExecutor(DigitsSlice, DGDExecutor):
    """Distributed gradient descent on this site's slice of the digits (reaches a neighbourhood of the optimum)."""


EXECUTORS = {"gt": DigitsGTExecutor, "gtadam": DigitsGTADAMExecutor, "dgd": DigitsDGDExecutor}


def centralized_optimum() -> tuple[float, torch.nn.Module]:
    """Fit the same model on all the data at once (L-BFGS); return (objective, model)."""
    x, y = load_data()
    model = make_model()
    loss = RegularizedCrossEntropy(model, scale=1.0 / len(y))
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss(model(x), y)
        value.backward()
        return value

    optimizer.step(closure)
    return objective(model, x, y), model
