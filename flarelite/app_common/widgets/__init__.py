"""Widgets: components that only react to events (AnalyticsSender, AnalyticsReceiver, ConvertToFedEvent...)."""
