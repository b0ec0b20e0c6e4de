"""The network hello-pt trains: a small CNN for scikit-learn's 8x8 digit images."""

import torch
from torch import nn


class SimpleNetwork(nn.Module):
    """Two convolutions and two dense layers; 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))  # 8x8 -> 4x4
        x = self.pool(torch.relu(self.conv2(x)))  # 4x4 -> 2x2
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))
