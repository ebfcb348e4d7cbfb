"""detlab: object localization and detection, every classic method on one shared toolkit.

The Python API (:mod:`detlab.api`): ``detlab.train(...)``, ``detlab.load(...)``,
``detlab.compare(...)`` and ``detlab.audit(...)``, and ``detlab.plot_views(image, views)``
(:mod:`detlab.view_plots`) to draw what a model shows inside; each imports torch and the methods
when called, so ``import detlab`` (and scoring result files with :mod:`detlab.eval`) stays light.
"""

from detlab.api import audit, compare, load, train
from detlab.version import __version__
from detlab.view_plots import plot_views

__all__ = ["__version__", "audit", "compare", "load", "plot_views", "train"]
