"""Keep freed CPU memory in the process between training steps (glibc's malloc on Linux).

PyTorch's CPU tensors come from the C allocator. glibc's malloc serves blocks above its mmap threshold
with fresh mappings and returns the top of its heap to the kernel once enough of it is free (both
thresholds move with what the process has freed so far), so a training step whose activations are
megabytes each can keep getting new pages that the kernel must fault in and zero. Measured on the
project's 2-core CPU (``experiments/bench/results/malloc_cpu_2core.json``, bench README): a
forward + backward of a 64 -> 64 3x3 layer at batch 32 on 32x32 maps took 13,000-18,000 page
faults per step with ``SSIMConv2d`` and 4,000-10,000 with ``nn.Conv2d`` under glibc's default
policy, and about 50 and none with :func:`retain_freed_memory`; a bare training loop of the
paper's Fig. 4 SSIM network ran 11-19 % faster.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems: blocks up to 32 MiB come from the heap.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap kept before any is returned to the kernel.
TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory instead of returning it to the kernel.

    Process-wide and lasting: blocks of up to ``MMAP_THRESHOLD`` come from the heap, and up to
    ``TRIM_THRESHOLD`` of free heap is kept, so the process's resident memory stays near its peak
    instead of shrinking between steps. Processes forked afterwards (DataLoader workers) inherit
    it. The same effect without code: ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment, or another allocator (jemalloc,
    tcmalloc) preloaded.

    Returns whether the setting took: False, with nothing changed, where the C library is not
    glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    took = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and took
