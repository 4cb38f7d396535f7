"""The layer's accelerators: Eq. 8 through Triton kernels on CUDA, or compiled with torch.compile.

:mod:`ssimlayer.functional` defines the maths and runs it eagerly; this module registers
:func:`accelerated_eq8` with it (``import ssimlayer`` imports this module), which computes the same
Eq. 8 faster where it can:

- On CUDA (float32), :mod:`ssimlayer._triton_eq8`'s hand-written Triton kernels launch a handful of
  kernels per step instead of the dozens Inductor's graph splits into, which is what sets the pace
  on a GPU at the paper's sizes. The first forward and backward of each configuration are checked
  against the PyTorch path (:class:`TritonChecks`).
- Elsewhere (float32 on CPU or CUDA), the layer's elementwise work beyond its one convolution is
  compiled (:func:`fused`): run eagerly that is a dozen passes over memory; compiled, Inductor fuses
  it into a few loops (C++/OpenMP on the CPU). The compiled functions are functional's own, so the
  eager definition is always the reference, and tests compare the two.

Every path falls back, with a warning, to the next (Triton -> torch.compile -> eager) where it
cannot run. Set ``SSIMLAYER_FUSE=0`` (or call :func:`set_fusion`) to stay eager everywhere.
"""

from __future__ import annotations

import contextlib
import os
import types
import warnings
from collections.abc import Callable

import torch

from ssimlayer import functional

__all__ = [
    "accelerated_eq8",
    "fused",
    "set_fusion",
    "fusion_enabled",
    "set_triton",
    "triton_enabled",
    "triton_eq8",
    "disable_triton",
]

# Below this many output elements the eager passes cost less than a compiled call's guards.
MIN_NUMEL = 1 << 16
_enabled = os.environ.get("SSIMLAYER_FUSE", "1") != "0"
# Compiled copies of the fused functions, one per configuration (see fused).
_compiled: dict[tuple, Callable] = {}
MAX_CONFIGURATIONS = 64
# Keep the caller's memory layout: Inductor would otherwise copy NCHW inputs to channels-last around
# the convolutions, which cost more than the fusion saves at these sizes (2-core CPU,
# experiments/bench/README.md).
_INDUCTOR_OPTIONS = {"layout_optimization": False}


_triton_ok = True  # until the first failed import or launch


def accelerated_eq8(x: torch.Tensor, w: torch.Tensor, c1: float, c2: float, geometry):
    """Eq. 8 through the Triton kernels where they apply, else with its elementwise work compiled;
    None (functional's eager path) with fusion off, inside an outer ``torch.compile`` (Inductor then
    fuses the eager definition itself), or for dtypes and devices neither handles."""
    if not _enabled or torch.compiler.is_compiling():
        return None
    kernels = triton_eq8(x, w)
    if kernels is not None:
        out = _triton_path(x, w, c1, c2, geometry, kernels)
        if out is not None:
            return out
    if x.dtype != torch.float32 or x.device.type not in ("cpu", "cuda"):
        return None
    return functional.eq8_pytorch(x, w, c1, c2, geometry, run=fused)


def set_fusion(enabled: bool) -> None:
    """Turn the compiled elementwise path on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


def fusion_enabled() -> bool:
    return _enabled


def triton_enabled() -> bool:
    return _triton_ok


def set_triton(enabled: bool) -> None:
    """Use the Triton kernels on CUDA (the default) or not (torch.compile or eager instead)."""
    global _triton_ok
    _triton_ok = bool(enabled)


def _worthwhile(t: torch.Tensor) -> bool:
    return (
        _enabled
        and t.dtype == torch.float32
        and t.device.type in ("cpu", "cuda")
        and t.numel() >= MIN_NUMEL
        and not torch.compiler.is_compiling()  # an outer compile fuses the eager code itself
    )


def _signature(arg, batch: int) -> object:
    """What of one argument selects a compiled variant: a tensor's shape (without its first size
    when that is the batch's, which may vary), dtype and device; any other argument itself."""
    if isinstance(arg, torch.Tensor):
        shape = tuple(arg.shape[1:] if arg.dim() and arg.shape[0] == batch else arg.shape)
        return (shape, arg.dtype, arg.device, arg.requires_grad)
    return arg


def _fresh_copy(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: Dynamo keeps its compiled variants, and counts its
    recompilations against ``torch._dynamo.config.recompile_limit`` (8), per code object."""
    copy = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    # Names only: a __wrapped__ (functools.update_wrapper) would lead Dynamo back to fn's code.
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    return copy


def fused(fn: Callable, size_hint: torch.Tensor, *args):
    """``fn(*args)``, compiled when ``size_hint`` is large float32 work on CPU or CUDA.

    Each configuration (``fn`` and the arguments' :func:`_signature`) gets its own compiled copy
    of ``fn``, so that a model with many differently shaped layers does not run into Dynamo's
    recompile limit; configurations beyond :data:`MAX_CONFIGURATIONS` run eagerly.
    """
    global _enabled
    if not _worthwhile(size_hint):
        return fn(*args)
    batch = size_hint.shape[0]
    try:
        key = (fn, *(_signature(arg, batch) for arg in args))
        compiled = _compiled.get(key)
    except TypeError:  # an unhashable argument: no cache for it
        return fn(*args)
    if compiled is None:
        if len(_compiled) >= MAX_CONFIGURATIONS:
            _warn_once(
                f"ssimlayer: more than {MAX_CONFIGURATIONS} configurations of the SSIM layer in "
                f"this process; new ones run eagerly (slower, same results)"
            )
            return fn(*args)
        # Static shapes vectorise best; only the batch dimension may vary without a recompile.
        compiled = _compiled[key] = torch.compile(
            _fresh_copy(fn), dynamic=False, fullgraph=True, options=_INDUCTOR_OPTIONS
        )
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dim() > 0 and arg.shape[0] == batch:
            torch._dynamo.maybe_mark_dynamic(arg, 0)
    try:
        return compiled(*args)
    except Exception as err:  # no C++ compiler, no Triton, ...: the eager code is always correct
        if type(err).__name__ == "FailOnRecompileLimitHit":  # this configuration keeps changing
            _compiled[key] = fn
            _warn_once(
                "ssimlayer: torch.compile reached its recompile limit for one configuration of "
                "the SSIM layer; it runs eagerly from now on (slower, same results)"
            )
            return fn(*args)
        _enabled = False
        warnings.warn(
            f"ssimlayer: torch.compile of the SSIM elementwise work failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); using eager PyTorch from now on "
            f"(slower, same results). Set SSIMLAYER_FUSE=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return fn(*args)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def triton_eq8(x: torch.Tensor, w: torch.Tensor):
    """The Triton kernel module if it should run Eq. 8 for these tensors, else None.

    It runs for float32 CUDA tensors when fusion is on, except while an outer ``torch.compile``
    traces the layer (Inductor then fuses the eager definition itself). float64 stays on the
    PyTorch path, which is exact to the reference; the kernels handle float64 too, for the tests.
    """
    if not (
        _enabled
        and _triton_ok
        and x.is_cuda
        and x.dtype == torch.float32
        and w.dtype == x.dtype
        and w.device == x.device
        and not torch.compiler.is_compiling()
    ):
        return None
    try:
        from ssimlayer import _triton_eq8
    except Exception as err:  # no triton in this install
        disable_triton(err)
        return None
    return _triton_eq8


def disable_triton(err: BaseException) -> None:
    """Stop using the Triton kernels for the rest of the process, saying why."""
    global _triton_ok
    _triton_ok = False
    warnings.warn(
        f"ssimlayer: the Triton kernels for Eq. 8 are unavailable ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}); using the torch.compile/eager path from "
        f"now on (slower on a GPU, same results). Set SSIMLAYER_FUSE=0 to skip the attempt.",
        RuntimeWarning,
        stacklevel=3,
    )


class TritonChecks:
    """First-use checks of the Triton kernels against the PyTorch path, one per configuration.

    The first forward and the first backward of each configuration (device, dtype, input shape
    without the batch, strides, filter shape, geometry: what selects a compiled variant) are run
    again by both the kernels and the PyTorch path, with full-float32 convolutions; on a GPU the
    kernels run twice, so that their direct launch (see :class:`ssimlayer._triton_launch.Launcher`)
    is checked too. If the two disagree beyond float32 rounding, the configuration uses the PyTorch
    path for the rest of the process and a warning says so; otherwise it is never checked again.
    This costs two or three extra forwards and backwards per configuration, not per step.
    """

    # Loose enough for float32 rounding in two summation orders, tight enough for any indexing or
    # formula error, which moves results by a sizeable fraction of their range.
    RTOL = 1e-2
    ATOL = 1e-3  # relative to the largest magnitude of the reference

    def __init__(self) -> None:
        self._done: set[tuple] = set()  # (kind, config) pairs checked
        self._failed: set[tuple] = set()  # configurations whose kernels disagreed

    def usable(self, config: tuple) -> bool:
        return config not in self._failed

    def checked(self, kind: str, config: tuple) -> bool:
        return (kind, config) in self._done

    def record(self, kind: str, config: tuple, ok: bool) -> None:
        """Remember a verdict: ``config`` was checked for ``kind`` ("forward" or "backward")."""
        self._done.add((kind, config))
        if not ok:
            self._failed.add(config)

    def agree(self, kind: str, config: tuple, fast, reference) -> bool:
        """Compare the two paths' tensors, remember the verdict, warn on a disagreement."""
        worst = 0.0
        ok = True
        for a, b in zip(fast, reference):
            if b.numel() == 0:
                continue
            scale = float(b.abs().nan_to_num(0.0, 0.0, 0.0).max())
            ok &= torch.allclose(
                a, b, rtol=self.RTOL, atol=self.ATOL * max(scale, 1.0), equal_nan=True
            )
            worst = max(worst, float((a - b).abs().nan_to_num(0.0, 0.0, 0.0).max()))
        self.record(kind, config, ok)
        if not ok:
            device, dtype, in_shape, _, w_shape, geometry = config
            warnings.warn(
                f"ssimlayer: the Triton {kind} kernels disagree with the PyTorch path (largest "
                f"difference {worst:.3g}) for input (B, {', '.join(map(str, in_shape))}), filters "
                f"{tuple(w_shape)}, (stride, padding, dilation, groups) = {geometry}, {dtype} on "
                f"{device}; this configuration uses the PyTorch path from now on (same results, "
                f"slower). Please report it with these numbers.",
                RuntimeWarning,
                stacklevel=3,
            )
        return ok

    def reset(self) -> None:
        self._done.clear()
        self._failed.clear()


triton_checks = TritonChecks()


# ---------------------------------------------------------------------------------------------
# The Triton path and its first-use checks


def _triton_path(x, w, c1: float, c2: float, geometry, kernels):
    """Eq. 8 by the Triton kernels, or None where this configuration failed its check or the
    kernels cannot run here (then never tried again)."""
    config = _triton_config(x, w, geometry)
    if not triton_checks.usable(config):
        return None
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    try:
        w = w.contiguous()
        if needs_grad:
            return _SSIMConv2dEq8Triton.apply(x, w, c1, c2, geometry, kernels, config)
        out = kernels.eq8_forward(x, w, c1, c2, geometry, False)[0]
        if _forward_agrees(kernels, x, w, c1, c2, geometry, config):
            return out
        return functional._eq8_forward(x, w, c1, c2, geometry)[0]
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # a Triton that cannot compile here: the other paths still work
        disable_triton(err)
        return None


class _SSIMConv2dEq8Triton(torch.autograd.Function):
    """:class:`ssimlayer.functional._SSIMConv2dEq8` with its work in :mod:`ssimlayer._triton_eq8`.

    Same maths and the same saving rule (see :func:`ssimlayer.functional._keeps_sxy`); the filter
    statistics are saved too. The first forward and the first backward of each configuration are
    also computed by the PyTorch path and compared (see :class:`TritonChecks`); a configuration
    whose kernels disagree, or whose backward kernels cannot run, uses the PyTorch path instead.
    """

    @staticmethod
    def forward(ctx, x, w, c1, c2, geometry, kernels, config):
        keep = functional._keeps_sxy(x, w, geometry)
        out, box, ystat, s_xy = kernels.eq8_forward(x, w, c1, c2, geometry, save_sxy=keep)
        ctx.eager = not _forward_agrees(kernels, x, w, c1, c2, geometry, config)
        if ctx.eager:
            out, box, _ = functional._eq8_forward(x, w, c1, c2, geometry)
        ctx.save_for_backward(x, w, box, ystat, s_xy)
        ctx.constants = (c1, c2, geometry, kernels, config)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w, box, ystat, s_xy = ctx.saved_tensors
        c1, c2, geometry, kernels, config = ctx.constants
        needs = tuple(ctx.needs_input_grad[:2])
        if not ctx.eager and triton_checks.usable(config):
            try:
                grads = kernels.eq8_backward(
                    x, w, box, ystat, s_xy, grad_out, c1, c2, geometry, needs
                )
                if _backward_agrees(
                    kernels, x, w, box, ystat, grad_out, c1, c2, geometry, needs, config
                ):
                    return *grads, None, None, None, None, None
            except torch.OutOfMemoryError:
                raise
            except Exception as err:
                disable_triton(err)
        grads = functional._eq8_backward(x, w, box, None, grad_out, c1, c2, geometry, needs)
        return *grads, None, None, None, None, None


@contextlib.contextmanager
def _ieee_float32_convolutions():
    """cuDNN convolutions in full float32 (no TF32) inside the block, the caller's setting after."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        saved = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved


def _forward_agrees(kernels, x, w, c1, c2, geometry, config) -> bool:
    """Whether the Triton forward agrees with the PyTorch one for this configuration.

    Checked on first use only (the verdict is kept): both run again with full-float32
    convolutions, so that TF32 (on by default for cuDNN) does not make two correct paths differ.
    """
    if triton_checks.checked("forward", config):
        return triton_checks.usable(config)
    with torch.no_grad(), _ieee_float32_convolutions():
        runs = kernels.launches_per_check()  # the second one a direct launch, where there is one
        fast = [kernels.eq8_forward(x, w, c1, c2, geometry, False)[0] for _ in range(runs)]
        ref = functional._eq8_forward(x, w, c1, c2, geometry)[0]
    return triton_checks.agree("forward", config, fast, [ref] * runs)


def _backward_agrees(kernels, x, w, box, ystat, grad_out, c1, c2, geometry, needs, config) -> bool:
    """Whether the Triton backward agrees with the PyTorch one (checked as the forward is)."""
    if triton_checks.checked("backward", config):
        return triton_checks.usable(config)
    with _ieee_float32_convolutions():
        runs = kernels.launches_per_check()  # the second one a direct launch, where there is one
        args = (x, w, box, ystat, None, grad_out, c1, c2, geometry, needs)
        fast = [g for _ in range(runs) for g in kernels.eq8_backward(*args)]
        ref = functional._eq8_backward(x, w, box, None, grad_out, c1, c2, geometry, needs) * runs
    pairs = [(f, r) for f, r in zip(fast, ref) if r is not None]
    return triton_checks.agree("backward", config, [f for f, _ in pairs], [r for _, r in pairs])


def _triton_config(x: torch.Tensor, w: torch.Tensor, geometry) -> tuple:
    """Everything that selects a compiled variant of the Triton kernels (not the batch size)."""
    return (x.device, x.dtype, tuple(x.shape[1:]), x.stride()[1:], tuple(w.shape), geometry)


functional.register_accelerator(accelerated_eq8)
