"""The data plane: a faster channel beside gRPC, negotiated over the authenticated gRPC connection.

``channel.py`` carries over one socket the buffers of large frames as blobs (the frame's header names the blob
on the gRPC stream: between a site and its server) or whole frames (between two sites on a direct connection);
the caller's thread writes, one reader thread per channel receives straight into the destination buffers and
delivers whole frames. ``handshake.py`` opens one (a Unix socket of the same user, or TCP with TLS from the
project's certificates; a one-time token from the gRPC Welcome); ``tls_stream.py`` is its TLS.
The gRPC endpoint (``grpc/data_routes.py``) decides which frames use it; the runtime never knows.
"""

from .channel import ChannelUnavailable, DataChannel
from .handshake import DataListener, dial

__all__ = ["ChannelUnavailable", "DataChannel", "DataListener", "dial"]
