"""Transports: the CommunicationProtocol contract and its implementations."""

from .memory import InMemoryCommunicationProtocol, InMemoryHub
from .protocol import CommunicationProtocol, Frame

__all__ = ["CommunicationProtocol", "Frame", "InMemoryCommunicationProtocol", "InMemoryHub"]
