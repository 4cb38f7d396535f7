"""Lightning's per-step hooks for a manual training step, at a fraction of Lightning's cost.

When ``ClassifierModule`` runs its optimiser steps itself (``steps_per_execution > 1``, or a step
replayed from a CUDA graph with ``cuda_graph=True``) it owes the callbacks and the LightningModule
the hooks Lightning's own step calls: ``on_before_backward``, ``on_after_backward`` and
``on_before_optimizer_step``. Lightning's ``_call_callback_hooks`` calls a hook on every
callback, also on the many that inherit ``Callback``'s empty one, and builds each callback's
profiler label (its ``state_key``, a ``repr`` of its settings for ``ModelCheckpoint``) on every
call. Measured on the project's CPU with a no-op replay, those three hooks were most of the
pipeline's own cost per step once ``steps_per_execution`` amortises the rest.

:class:`StepHooks` decides once, at the start of training, which callbacks and whether the
LightningModule override each hook, and keeps their bound methods and profiler labels. A call then
does what Lightning's does for the ones that override it, in Lightning's order (callbacks in
``trainer.callbacks`` order, then the LightningModule), with the same arguments, the same
``_current_fx_name`` (which ``self.log`` checks) and the same profiler labels. Hooks inherited
unchanged from ``Callback`` or ``LightningModule`` are empty, so skipping them changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl

__all__ = ["StepHooks"]


def _overrides(obj: Any, base: type, name: str) -> bool:
    """Whether ``obj.<name>`` is something other than ``base``'s own (empty) hook."""
    fn = getattr(obj, name, None)
    return callable(fn) and getattr(fn, "__func__", fn) is not getattr(base, name)


class StepHooks:
    """The overriding callbacks' and LightningModule's hooks ``names`` of a trainer, ready to call.

    Built when training starts (``trainer.callbacks`` is fixed by then); callbacks added to the
    trainer later are not seen.

    Example::

        hooks = StepHooks(trainer, pl_module, ["on_after_backward"])
        hooks("on_after_backward")  # as Lightning's callback hooks, then the module's hook
    """

    def __init__(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: Iterable[str]
    ) -> None:
        self._module, self._profiler = pl_module, trainer.profiler
        self._calls: dict[str, list[tuple[Callable[..., Any], str, tuple]]] = {}
        for name in names:
            calls = [
                (getattr(cb, name), f"[Callback]{cb.state_key}.{name}", (trainer, pl_module))
                for cb in trainer.callbacks
                if _overrides(cb, pl.Callback, name)
            ]
            if _overrides(pl_module, pl.LightningModule, name):
                label = f"[LightningModule]{type(pl_module).__name__}.{name}"
                calls.append((getattr(pl_module, name), label, ()))
            self._calls[name] = calls

    def __call__(self, name: str, *args: Any) -> None:
        calls = self._calls[name]
        if not calls:
            return
        module, profile = self._module, self._profiler.profile
        previous = module._current_fx_name
        module._current_fx_name = name
        try:
            for fn, label, leading in calls:
                with profile(label):
                    fn(*leading, *args)
        finally:
            module._current_fx_name = previous
