"""Aggregators of the server workflows; the package exports the two NVFlare exports."""

from .accumulate_model_aggregator import AccumulateWeightedAggregator
from .intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator

__all__ = ["AccumulateWeightedAggregator", "InTimeAccumulateWeightedAggregator"]
