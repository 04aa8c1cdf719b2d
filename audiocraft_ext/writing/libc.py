"""Two Linux calls Python's os module lacks, through libc; no-ops elsewhere."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) \
    if sys.platform == "linux" else None
if _LIBC is not None:
    _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _LIBC.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_uint]
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MADV_DONTNEED = 4
_SYNC_FILE_RANGE_WRITE = 2


def drop_pages(address: int, length: int) -> None:
    """Give back the whole pages within ``[address, address + length)`` of a private map of
    an unmodified file: they leave this process's RSS, and a later read reads the file again.
    (On anonymous memory this would zero it: callers pass mapped file pages only.)"""
    start = -(-address // PAGE) * PAGE  # pages shared with a neighbour stay
    end = (address + length) // PAGE * PAGE
    if _LIBC is not None and end > start:
        _LIBC.madvise(start, end - start, _MADV_DONTNEED)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes of ``fd`` at ``offset`` to disk, without waiting: a
    long write then never piles up enough dirty pages to be throttled, and the final fsync
    has little left to do."""
    if _LIBC is not None:
        _LIBC.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
