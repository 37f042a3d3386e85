"""Process memory: the peak a shard reports, and glibc's malloc arenas capped so that memory stays flat.

Why the cap: glibc gives each thread that allocates its own malloc arena (up to 8 per core) and returns a
freed arena's memory to the system only from the top of its heaps. Streaming a corpus allocates and frees
hundreds of MB per batch from several threads (the `tokenizers` pool encodes, a prefetch thread hands batches
over, Prefect runs a task in its own thread), so without a cap the resident size of `lendata build decompose`
grew with the corpus: 686 MB at 1x, 924 MB at 4x the standard library, with no Python object left behind
(tracemalloc held 5-6 MB throughout). With two arenas it stays flat (bench/decompose_scale.py; README).
`MALLOC_ARENA_MAX` in the environment, when set, wins: glibc reads it at start-up and lendata leaves it be.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource

ARENAS = 2  # measured flat and no slower than the default on the bench's 2 cores (README, Dataset Decomposition)
_M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for the rest of this process; True if the cap is in force. Call it before
    threads start: arenas made earlier stay. A no-op off glibc and when the user set MALLOC_ARENA_MAX."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def worker_env() -> dict[str, str]:
    """What a worker process (a Ray worker) needs in its environment for the same cap from its first malloc."""
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX") or str(ARENAS)}


def peak_rss_mb() -> int:
    """This process's peak resident memory (ru_maxrss, kB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
