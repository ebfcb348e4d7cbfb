"""matplotlib for the figure files detlab writes (reports, curves, galleries).

:func:`pyplot` puts matplotlib on its Agg backend (PNG files, no display needed), unless the
program has already imported pyplot: then its backend (a notebook's inline one, a script's own
window) is kept, so writing a report from a notebook does not stop the notebook's figures from
showing. detlab closes every figure it makes once saved.
"""

from __future__ import annotations

import sys


def pyplot():
    """``matplotlib.pyplot``, on the Agg backend unless it was imported before (see the module doc)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot
