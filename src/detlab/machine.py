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


def memory_available_bytes() -> int | None:
    """Memory the system can give processes now without swapping (``MemAvailable`` of
    ``/proc/meminfo``; elsewhere the free physical pages), or ``None`` when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def resident_bytes(pid: int | str = "self", field: str = "VmRSS") -> int | None:
    """Resident memory of a process: ``VmRSS`` (now) or ``VmHWM`` (its peak) of
    ``/proc/PID/status``; ``None`` where there is no ``/proc`` (not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
