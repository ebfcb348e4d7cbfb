"""detlab: object localization and detection, every classic method on one shared toolkit.

The Python API (:mod:`detlab.api`): ``detlab.train(...)``, ``detlab.load(...)`` and
``detlab.compare(...)``; each imports torch and the methods when called, so ``import detlab``
(and scoring result files with :mod:`detlab.eval`) stays light.
"""

from detlab.api import compare, load, train
from detlab.version import __version__

__all__ = ["__version__", "compare", "load", "train"]
