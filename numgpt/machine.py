"""What this machine can still give a process: its memory without swapping. The training room checks a
run's estimate against it before allocating (training/memory.py); the column panels of numgpt.load's
models are copied only within it (panels.py)."""

from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes the machine can still give without swapping: MemAvailable of /proc/meminfo (Linux), else
    the available physical pages (os.sysconf); None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024        # "MemAvailable:  123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
