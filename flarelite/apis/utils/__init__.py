"""Helpers on the API: analytix_utils (tracking records as DXOs and events)."""
