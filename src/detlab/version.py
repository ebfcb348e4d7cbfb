"""The version of detlab (its own module, so any layer may read it)."""

__version__ = "0.1.0"
