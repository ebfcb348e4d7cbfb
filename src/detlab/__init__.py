"""detlab: object localization and detection, every classic method on one shared toolkit.

The Python API (:mod:`detlab.api`): ``detlab.train(...)``, ``detlab.load(...)``,
``detlab.compare(...)`` and ``detlab.audit(...)``; each imports torch and the methods when called,
so ``import detlab`` (and scoring result files with :mod:`detlab.eval`) stays light.
"""

from detlab.api import audit, compare, load, train
from detlab.version import __version__

__all__ = ["__version__", "audit", "compare", "load", "train"]
