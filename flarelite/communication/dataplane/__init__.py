"""The data plane: a faster channel beside gRPC, negotiated over the authenticated gRPC connection.

``channel.py`` carries the buffers of large frames over one socket as blobs (the caller's thread writes, one
reader thread per channel receives straight into the destination buffers; the frame's header names the blob on
the gRPC stream); ``handshake.py`` opens one between a site and the server of the same machine (a Unix socket,
the same user, a one-time token from the gRPC Welcome). The gRPC endpoint (``grpc/data_routes.py``) decides which
frames use it; the runtime never knows.
"""

from .channel import ChannelUnavailable, DataChannel
from .handshake import DataListener, dial

__all__ = ["ChannelUnavailable", "DataChannel", "DataListener", "dial"]
