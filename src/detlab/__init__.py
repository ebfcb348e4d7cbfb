"""detlab: object localization and detection, every classic method on one shared toolkit."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # detlab.train / detlab.load / detlab.compare / detlab.Predictor, imported on first use so `import detlab` stays light.
    if name in ("train", "load"):
        from detlab import api

        return getattr(api, name)
    if name == "compare":
        from detlab.comparison import compare

        return compare
    if name == "Predictor":
        from detlab.engine.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'detlab' has no attribute {name!r}")
