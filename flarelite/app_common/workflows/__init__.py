"""Server workflows (ModelController, FedAvg, ScatterAndGather, CrossSiteModelEval, Cyclic...).

As in NVFlare, import them from their modules, e.g. ``from flarelite.app_common.workflows.fedavg import FedAvg``.
"""
