"""Implementations of API contracts that user code subclasses (Controller)."""
