"""Keep freed tensor memory in the process instead of handing it back to the OS after every batch.

A training step allocates and frees tens of tensors of 10-100 MB. glibc serves blocks above its mmap
threshold (at most 32 MB by default) with fresh mmap calls, so every such tensor costs a page fault per
4 KiB page and the kernel zeroing it: measured on 2 cores, half of a CPU training epoch was system time
(66 s/epoch -> 31 s with this module's settings; `benchmarks/train.py`). Raising the mmap and trim
thresholds makes glibc recycle those blocks from its heap, as jemalloc or tcmalloc would, without an
extra dependency. The cost: the resident size stays at its high-water mark, which bounded batches keep
bounded. Elsewhere than glibc (macOS, musl, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused
_TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of freed heap (mallopt takes an int)

_done = False


def reuse_freed_memory() -> bool:
    """Tune glibc malloc for large, short-lived tensors, once per process; True where it applied."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False
    return _done
