"""detlab: object localization and detection, every classic method on one shared toolkit."""

__version__ = "0.1.0"
