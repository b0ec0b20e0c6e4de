"""NVFlare's app_common at its paths: FLModel, workflows, aggregators, persistors, filters, widgets."""
