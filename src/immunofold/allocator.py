"""glibc's allocator set to keep freed memory, for programs that own their process (the command line, benchmarks).

A forward pass allocates and frees many large tensors (the per-head N x N attention biases: ~7 MB each for 4
receptors of 230 residues). By default glibc hands every block over its mmap threshold back to the kernel when it is
freed, so the next pass page-faults all of it in again: on a 2-core CPU that was ~25 % of the ensemble's CPU time at
batch 4 (ensemble forward 238 -> 178 ms per Fv, one thread). Raising the mmap and trim thresholds keeps freed blocks
in the heap for reuse; the process then holds on to its peak memory. Library calls leave this alone, like torch's
thread count: only the command line and the benchmarks call `keep_freed_memory`.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # freed blocks up to this size stay in the heap
OLDER_GLIBC_MMAP_MAX = 32 << 20  # glibc before 2.35 refuses mmap thresholds above 32 MiB on 64-bit machines


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks (up to 1 GiB, else 32 MiB) in the heap. False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # musl and others: leave their allocator as it is
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) or libc.mallopt(M_MMAP_THRESHOLD, OLDER_GLIBC_MMAP_MAX)
    return bool(mmap_ok) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
