"""torch.profiler without Kineto's start/stop chatter on the terminal.

torch 2.14's Kineto writes ``USDT: ... profiler_start`` and ``profiler_stop`` lines (and at some log
levels ``STAGE: ...``) straight to file descriptor 2 at every profiling session, whatever
``KINETO_LOG_LEVEL`` says; a benchmark that profiles a few steps per shape fills the terminal with
them. :func:`quiet_profile` is ``torch.profiler.profile`` with descriptor 2 captured for the
session: every other line (a warning, an error) is written back to stderr when it ends.

Dropped besides: Kineto's ``ERROR: ... gpuGetDeviceCount failed`` on a machine without a GPU (it
looks for one whatever the activities asked), and the allocator's note that blocks allocated before
the session will show no deallocation (the benchmarks read peaks of allocations made inside it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from torch.profiler import profile

CHATTER = (
    "USDT:",
    "STAGE:",
    "gpuGetDeviceCount failed",
    "was allocated before the profiling started",
)


@contextlib.contextmanager
def native_stderr_without(patterns: tuple[str, ...] = CHATTER):
    """Capture file descriptor 2 inside the block; write back the lines that contain none of
    ``patterns`` when it ends (also when it raises)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not any(pattern in line for pattern in patterns)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def quiet_profile(*args, **kwargs):
    """``torch.profiler.profile(*args, **kwargs)`` without Kineto's chatter (see the module)."""
    with native_stderr_without(), profile(*args, **kwargs) as prof:
        yield prof
