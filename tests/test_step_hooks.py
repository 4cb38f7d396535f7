"""``StepHooks`` calls what Lightning's hook calls would, on the callbacks and module that override
each hook, with the same arguments, ``_current_fx_name`` and profiler labels."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.profilers import SimpleProfiler
from pytorch_lightning.trainer import call
from torch import Tensor, nn

from ssimlayer.lightning.module import STEP_HOOKS as HOOKS
from ssimlayer.lightning.module import _runs_steps_as_lightning
from ssimlayer.lightning.step_hooks import StepHooks
from ssimlayer.train import train
from tests import test_graphed_step
from tests.test_reliability import compose_cfg
from tests.test_steps_per_execution import RESIDENT

cpu_graphs = test_graphed_step.cpu_graphs  # the stand-in CUDA graph, as a fixture here too


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


@pytest.mark.parametrize(
    "trainer_args,as_lightning",
    [
        ({"precision": "32-true"}, True),
        ({"precision": "bf16-mixed"}, True),
        ({"precision": "64-true"}, False),  # DoublePrecision: Lightning's path
        ({"strategy": "ddp", "devices": 1}, False),
    ],
)
def test_which_trainers_get_step_hooks(tmp_path, trainer_args, as_lightning):
    trainer = pl.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, **trainer_args)
    assert _runs_steps_as_lightning(trainer) is as_lightning


# --- through training: manual steps (eager or replayed) call what automatic ones do --------


class HookLog(pl.Callback):
    """Records every per-step hook call: hook, global step, the module's _current_fx_name and the
    loss or the optimiser's class."""

    calls: list = []

    def _record(self, trainer, pl_module, hook, arg=None):
        if isinstance(arg, Tensor):
            arg = float(arg.detach())
        elif arg is not None:
            arg = type(arg).__name__
        HookLog.calls.append((hook, trainer.global_step, pl_module._current_fx_name, arg))

    def on_before_backward(self, trainer, pl_module, loss):
        self._record(trainer, pl_module, "on_before_backward", loss)

    def on_after_backward(self, trainer, pl_module):
        self._record(trainer, pl_module, "on_after_backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._record(trainer, pl_module, "on_before_optimizer_step", optimizer)


@pytest.mark.parametrize(
    "precision,manual",
    [
        ("32-true", "model.cuda_graph=true"),
        ("32-true", "model.steps_per_execution=3"),  # StepHooks' eager manual steps
        ("64-true", "model.steps_per_execution=3"),  # Lightning's manual_backward and step
    ],
)
def test_callbacks_see_the_hooks_of_every_manual_step(tmp_path, cpu_graphs, precision, manual):
    logged = {}
    for name, extra in (("automatic", ()), ("manual", (manual,))):
        HookLog.calls = []
        train(
            compose_cfg(
                tmp_path / name,
                *RESIDENT,
                f"+callbacks.hook_log._target_={__name__}.HookLog",
                f"trainer.precision={precision}",
                *extra,
            )
        )
        logged[name] = HookLog.calls
    if "cuda_graph" in manual:
        assert cpu_graphs["replays"] == 13
    assert len(logged["manual"]) == len(logged["automatic"]) == 16 * 3
    for got, want in zip(logged["manual"], logged["automatic"], strict=True):
        assert got[:3] == want[:3]  # hook, global step, _current_fx_name
        assert got[3] == (want[3] if isinstance(want[3], str) else pytest.approx(want[3]))
