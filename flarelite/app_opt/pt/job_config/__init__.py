"""PyTorch job helpers: ``model.PTModel``, ``base_fed_job.BaseFedJob``, ``fed_avg.FedAvgJob`` (import the modules)."""
