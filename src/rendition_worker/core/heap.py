"""Give freed encoder memory back to the system, so that a worker's peak stays one render's."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt() parameter; buffers from this size up are mapped on their own and unmapped
# when freed. glibc's own threshold starts at 128 KiB and rises to the size of every large
# buffer freed (up to 32 MiB), after which the decoded source, the resized copies and the
# encoders' frames all come from heaps that keep them: a process that had rendered 10
# photos held 417 MB it no longer used, 7 MB with these settings (pipeline.py --steady).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    # Only glibc has both; musl and macOS manage their heaps otherwise, and are left alone.
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


@functools.cache
def map_large_buffers() -> bool:
    """Make buffers of MMAP_THRESHOLD or more their own mappings (once); True if glibc took it."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the system (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None:
        # SVT-AV1's threads free a 2560 px encode's 120 MB in small pieces over many arenas;
        # without a trim most of it stays resident, and the next render maps more beside it.
        libc.malloc_trim(0)
