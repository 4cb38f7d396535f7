"""Launching compiled Triton kernels without the JIT's per-launch work: :class:`Launcher`.

Used by :mod:`ssimlayer._triton_eq8` for every kernel launch. On an H200 it took 170-410 us of
host time off each SSIM step (experiments/bench/README.md).
"""

from __future__ import annotations

import os
import warnings
import weakref

import torch
import triton
from triton.compiler import CompiledKernel

__all__ = ["Launcher", "launches_per_check", "set_direct_launch"]

_direct = True  # see Launcher; off for the process once a direct launch fails
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # no compiled kernels to launch
_launchers: weakref.WeakSet = weakref.WeakSet()  # every Launcher, for _direct_launch_failed


class Launcher:
    """Launch a Triton kernel, skipping the JIT's per-launch argument work after the first launch.

    ``kernel[grid](*args, **meta)`` binds every argument, asks Triton's specialiser about each one
    (is an int 1 or a multiple of 16, is a pointer 16-byte aligned), builds a cache key from the
    answers and looks the compiled kernel up: most of a launch's host time for the thirty-odd
    arguments of these kernels (about 55 of 65 microseconds per launch on the H200 host). This keeps
    the compiled kernel that the JIT returned under a key holding everything the JIT specialises on,
    and more (the exact int and float values, each tensor's dtype and 16-byte alignment, the
    compile-time parameters, the device), and launches it directly through
    ``CompiledKernel[grid]`` from the second launch of the same key on. Under
    ``TRITON_INTERPRET=1`` (no compiled kernel) every launch goes through the JIT.

    ``CompiledKernel[grid]`` is not Triton's documented API. Two guards: a direct launch that raises
    (a Triton whose launcher takes other arguments) warns once, turns direct launches off for the
    process and relaunches through the JIT (the kernels only store, so a second launch writes the
    same values); and the layer's first-use checks launch the kernels twice, so that a direct launch
    is compared with the PyTorch path too (:func:`launches_per_check`).
    """

    MAX_KEYS = 256  # configurations kept per kernel; the oldest is dropped beyond that

    def __init__(self, kernel, pointers: int) -> None:
        """``kernel`` takes ``pointers`` tensors first, then only ints, floats and constants."""
        self.kernel, self.pointers = kernel, pointers
        self.compiled: dict[tuple, tuple] = {}  # key -> (compiled kernel, compile-time values)
        self.direct_launches = 0  # counted for the tests
        _launchers.add(self)  # cleared together if a direct launch fails

    def __call__(self, grid: tuple, *args, **meta):
        if not _direct:
            return self.kernel[grid](*args, **meta)
        p = self.pointers
        key = (
            args[0].device,
            tuple(meta.values()),  # meta's keys are fixed per kernel
            args[p:],
            *[(t.dtype, t.data_ptr() & 15 == 0) for t in args[:p]],
        )
        hit = self.compiled.get(key)
        if hit is not None:
            compiled, constants = hit
            try:
                compiled[(*grid, 1, 1)[:3]](*args, *constants)  # CompiledKernel reads all three
            except Exception as err:
                _direct_launch_failed(err)
                return self.kernel[grid](*args, **meta)
            self.direct_launches += 1
            return compiled
        if any(isinstance(a, torch.Tensor) for a in args[p:]):
            raise TypeError(f"Launcher: only the first {p} arguments may be tensors")
        compiled = self.kernel[grid](*args, **meta)
        if isinstance(compiled, CompiledKernel):
            # The launcher takes every parameter in order, compile-time ones included (it skips them).
            constants = tuple(meta[name] for name in self.kernel.arg_names[len(args) :])
            if len(self.compiled) >= self.MAX_KEYS:
                del self.compiled[next(iter(self.compiled))]
            self.compiled[key] = (compiled, constants)
        return compiled


def _direct_launch_failed(err: BaseException) -> None:
    """Launch through Triton's JIT from now on, saying why."""
    set_direct_launch(False)
    for launcher in list(_launchers):
        launcher.compiled.clear()
    first_line = str(err).splitlines()[0] if str(err) else ""
    warnings.warn(
        f"ssimlayer: launching a compiled Triton kernel directly failed ({type(err).__name__}: "
        f"{first_line}) with Triton {triton.__version__}; launching through Triton's JIT from now "
        f"on (same results, more host time per launch).",
        RuntimeWarning,
        stacklevel=4,
    )


def launches_per_check() -> int:
    """How many times a first-use check runs each kernel: twice where launches after the first
    are direct (see :class:`Launcher`), so that the direct launch is checked too; else once."""
    return 2 if _direct and not INTERPRETED else 1


def set_direct_launch(enabled: bool) -> bool:
    """Launch compiled kernels directly after their first launch (the default) or always through
    Triton's JIT; returns the previous setting."""
    global _direct
    previous, _direct = _direct, bool(enabled)
    return previous
