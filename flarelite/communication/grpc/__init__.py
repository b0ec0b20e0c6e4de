"""The gRPC transport: TCP (clear, TLS, mutual TLS) and Unix sockets."""

from .endpoint import GrpcCommunicationProtocol

__all__ = ["GrpcCommunicationProtocol"]
