"""Peer-to-peer distributed optimization (consensus, DGD, gradient tracking) on flarelite's public API.

The module paths are NVFlare's (``nvflare.app_opt.p2p``):

- ``types``: ``Neighbor``, ``Node``, ``Network``, ``Config``, ``LocalConfig`` (plain dicts on the wire);
- ``utils``: topology generators and checks of mixing weights;
- ``controllers``: ``DistOptController``, which tells each site its neighbours and starts the algorithm;
- ``executors``: ``SyncAlgorithmExecutor`` and the algorithms built on it (``ConsensusExecutor``,
  ``DGDExecutor``, ``GTExecutor``, ``GTADAMExecutor``).

Importing this package imports neither torch nor the executors; torch is needed only by the algorithms
that train torch models and when a site saves its history (``*.pt`` files).
"""
