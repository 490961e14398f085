"""Watchpost: an inline network watch for small offices."""

__version__ = "0.1.0"
