"""Backends, looked up by name and imported lazily."""
