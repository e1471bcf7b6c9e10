"""The heap settings a rendering process makes (glibc only)."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from rendition_worker.core import heap

GLIBC = platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c") is not None


@pytest.mark.skipif(not GLIBC, reason="mallopt and malloc_trim are glibc's")
def test_large_buffers_are_mapped_on_their_own_and_free_memory_is_returned() -> None:
    assert heap.map_large_buffers() is True
    assert heap.map_large_buffers() is True  # once per process, the answer stays
    heap.release_free_memory()
