"""Helpers of app_common (FLModelUtils, ...)."""
