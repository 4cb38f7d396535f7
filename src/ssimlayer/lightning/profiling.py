"""A Lightning profiler that does nothing, more cheaply than Lightning's default one."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.profilers import PassThroughProfiler

__all__ = ["NullProfiler"]


class _NullContext:
    """A reusable ``with`` block that does nothing (``contextlib.nullcontext`` without the
    ``enter_result`` bookkeeping)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NULL = _NullContext()


class NullProfiler(PassThroughProfiler):
    """Lightning's default profiler (``PassThroughProfiler``: records nothing) without its cost.

    Lightning wraps every hook call in ``with trainer.profiler.profile(name):``, each callback's hook
    included: about 130 blocks per training step with the default callbacks. The default
    profiler's ``profile`` is a ``contextlib.contextmanager`` generator, a few microseconds of host
    time each; this one returns one shared do-nothing object. Use ``trainer.profiler=simple`` (or
    any Lightning profiler) to actually profile.

    Examples:
        >>> with NullProfiler().profile("run_training_batch") as r:
        ...     print(r)
        None
    """

    def profile(self, action_name: str) -> _NullContext:  # type: ignore[override]
        return _NULL
