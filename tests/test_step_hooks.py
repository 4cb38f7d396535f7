"""``StepHooks`` calls what Lightning's hook calls would, on the callbacks and module that override
each hook, with the same arguments, ``_current_fx_name`` and profiler labels."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.profilers import SimpleProfiler
from pytorch_lightning.trainer import call
from torch import nn

from ssimlayer.lightning.module import GRAPHED_STEP_HOOKS as HOOKS
from ssimlayer.lightning.step_hooks import StepHooks


class Recording:
    """Appends (who, hook, the module's _current_fx_name, args) to a shared list."""

    def __init__(self, log: list, who: str) -> None:
        self.log, self.who = log, who

    def record(self, hook: str, module: pl.LightningModule, args: tuple) -> None:
        self.log.append((self.who, hook, module._current_fx_name, args))


class BeforeBackward(pl.Callback, Recording):
    def on_before_backward(self, trainer, pl_module, loss):
        self.record("on_before_backward", pl_module, (loss,))


class BothAfter(pl.Callback, Recording):
    def on_after_backward(self, trainer, pl_module):
        self.record("on_after_backward", pl_module, ())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.record("on_before_optimizer_step", pl_module, (optimizer,))


class Silent(pl.Callback):
    """Overrides none of the hooks: StepHooks skips it, Lightning calls its empty ones."""


class Module(pl.LightningModule):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.layer, self.log_ = nn.Linear(2, 2), log

    def on_after_backward(self):
        self.log_.append(("module", "on_after_backward", self._current_fx_name, ()))


def _trainer_and_module(tmp_path, log):
    callbacks = [BeforeBackward(log, "a"), Silent(), BothAfter(log, "b"), BeforeBackward(log, "c")]
    trainer = pl.Trainer(
        callbacks=callbacks,
        profiler=SimpleProfiler(),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    module = Module(log)
    trainer.strategy.connect(module)
    return trainer, module


#: Per hook: its arguments, and the profiler labels of the callbacks and module that override it.
OVERRIDES = {
    "on_before_backward": (("loss",), {"[Callback]BeforeBackward.on_before_backward"}),
    "on_after_backward": (
        (),
        {"[Callback]BothAfter.on_after_backward", "[LightningModule]Module.on_after_backward"},
    ),
    "on_before_optimizer_step": (("opt",), {"[Callback]BothAfter.on_before_optimizer_step"}),
}


@pytest.mark.parametrize("hook", HOOKS)
def test_step_hooks_call_what_lightning_calls(tmp_path, hook):
    args, overriding = OVERRIDES[hook]
    found = {}
    for way in ("lightning", "step_hooks"):
        log: list = []
        trainer, module = _trainer_and_module(tmp_path, log)
        module._current_fx_name = "training_step"
        if way == "lightning":
            call._call_callback_hooks(trainer, hook, *args)
            call._call_lightning_module_hook(trainer, hook, *args)
        else:
            StepHooks(trainer, module, HOOKS)(hook, *args)
        assert module._current_fx_name == "training_step"  # restored
        labels = {name for name in trainer.profiler.recorded_durations if hook in name}
        found[way] = (log, labels)
    (lightning_log, lightning_labels), (log, labels) = found["lightning"], found["step_hooks"]
    assert log == lightning_log and log  # same calls, same order, same arguments and fx name
    assert all(entry[2] == hook for entry in log)
    # Lightning also profiles the empty hooks it calls; StepHooks only the overriding ones.
    assert labels == overriding
    assert overriding < lightning_labels


def test_an_instance_attribute_hook_counts_as_an_override(tmp_path):
    log: list = []
    trainer, module = _trainer_and_module(tmp_path, log)
    silent = trainer.callbacks[1]
    silent.on_after_backward = lambda trainer, pl_module: log.append(("silent", "attr"))
    StepHooks(trainer, module, HOOKS)("on_after_backward")
    assert [entry[0] for entry in log] == ["silent", "b", "module"]  # trainer.callbacks order


def test_a_hook_that_raises_still_restores_the_fx_name(tmp_path):
    trainer, module = _trainer_and_module(tmp_path, [])

    def boom(trainer, pl_module):
        raise RuntimeError("boom")

    trainer.callbacks[1].on_after_backward = boom
    module._current_fx_name = "training_step"
    with pytest.raises(RuntimeError, match="boom"):
        StepHooks(trainer, module, HOOKS)("on_after_backward")
    assert module._current_fx_name == "training_step"
