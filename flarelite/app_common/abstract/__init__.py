"""Abstract bases of app_common: FLModel, ModelLearnable, persistors, aggregators, generators, locators."""
