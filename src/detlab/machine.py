"""What this machine offers a process, without importing torch."""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def user_cache_dir() -> Path:
    """Where detlab keeps what it can compute again (image checks, proposals, R-CNN's features)
    when a run does not say otherwise: ``$DETLAB_CACHE_DIR``, else ``~/.cache/detlab``."""
    return Path(os.environ.get("DETLAB_CACHE_DIR") or Path.home() / ".cache" / "detlab").expanduser()
