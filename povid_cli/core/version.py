"""The povid version (core keeps it so that the store can stamp shards without importing the package root)."""

__version__ = "0.1.0"
