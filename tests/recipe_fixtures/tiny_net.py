"""A tiny torch model for the recipe tests."""

import torch


class TinyNet(torch.nn.Module):
    """One linear layer, 3 inputs, 2 outputs."""

    def __init__(self, hidden: int = 2) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc = torch.nn.Linear(3, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
