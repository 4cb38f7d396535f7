"""The training step of the real pipeline reads nothing back from the device.

On a GPU every host read of a device tensor (``.item()``, ``float()``, ``if tensor:``, ``.cpu()``,
``nonzero``, ...) makes the CPU wait for the GPU, and at batch 32 that wait costs as much as the
step itself (issue #6). CPUs have no such wait, but the same calls can be counted: a torch function
mode sees every one of them. These tests train with the default callbacks and progress bar and
count the reads between two steps; the second test checks that the counter sees the reads the NaN
guard does at its batched checks, so a zero in the first is not a blind counter.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from torch.overrides import TorchFunctionMode

from ssimlayer.lightning import build_callbacks, build_loggers
from ssimlayer.utils import compose_config

#: Tensor methods that read a device tensor on the host, and ops whose output size depends on the
#: data (the device must finish before the host knows it).
HOST_READS = {
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__format__",
    "nonzero",
    "argwhere",
    "unique",
    "bincount",
    "masked_select",
    "repeat_interleave",
    # a tensor made from Python numbers is copied to the device and waited for
    "tensor",
    "as_tensor",
}


class HostReadCounter(TorchFunctionMode):
    """Counts :data:`HOST_READS` calls while ``active``, by name and calling line."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.active and name in HOST_READS:
            # the innermost caller outside torch: the line that asked for the read
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            self.calls[f"{name} at {where}"] += 1
        return func(*args, **(kwargs or {}))


class Window(pl.Callback):
    """Turns the counter on after step ``start`` and off after step ``stop``."""

    def __init__(self, counter: HostReadCounter, start: int, stop: int) -> None:
        self.counter, self.start, self.stop = counter, start, stop

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.start:
            self.counter.active = True
        if trainer.global_step == self.stop:
            self.counter.active = False


def count_host_reads(tmp_path: Path, start: int, stop: int, *overrides: str) -> dict[str, int]:
    cfg = compose_config(
        config_name="train",
        overrides=[
            "model=fig4_ssim",
            "model.net.widths=[2,2,2]",
            "data=synthetic",
            "data.num_train=512",
            "data.num_val=8",
            "data.batch_size=4",
            "data.device_resident=true",  # as on a GPU; on a CPU the same code runs
            "trainer=cpu",
            "+trainer.max_steps=40",
            "logger=csv",
            "~callbacks.fgsm_sweep",  # runs after fit
            f"paths.output_dir={tmp_path}",
            *overrides,
        ],
    )
    pl.seed_everything(0)
    counter = HostReadCounter()
    callbacks = [*build_callbacks(cfg), Window(counter, start, stop)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg.logger, "."))
    with counter:
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    assert trainer.global_step == 40
    return dict(counter.calls)


def test_default_pipeline_training_steps_read_nothing_from_the_device(tmp_path):
    # 128 steps per epoch: steps 5..35 are mid-epoch, between the guard's checks (every 100).
    assert count_host_reads(tmp_path, 5, 35) == {}


def test_counter_sees_the_nan_guards_batched_checks(tmp_path):
    calls = count_host_reads(tmp_path, 5, 35, "callbacks.nonfinite_guard.check_every_n_steps=10")
    assert sum(calls.values()) == 3, calls  # after steps 10, 20 and 30: one read each
    assert all("safety.py" in where for where in calls), calls


def test_steps_per_execution_reads_nothing_from_the_device_either(tmp_path):
    # Groups of 4: the window opens at the group end after step 4 and closes after step 36.
    assert count_host_reads(tmp_path, 4, 36, "model.steps_per_execution=4") == {}
    # ... and it is open: the guard's checks after 10, 20 and 30 losses are seen.
    calls = count_host_reads(
        tmp_path,
        4,
        36,
        "model.steps_per_execution=4",
        "callbacks.nonfinite_guard.check_every_n_steps=10",
    )
    assert sum(calls.values()) == 3 and all("safety.py" in where for where in calls), calls


def test_layer_health_sampling_every_step_reads_nothing_from_the_device(tmp_path):
    # LayerHealth (on by default) sums gradient norms on the device at every sampled step and
    # reads them at the epoch's end only: sampling every step adds no read within the epoch.
    calls = count_host_reads(tmp_path, 5, 35, "callbacks.layer_health.grad_every_n_steps=1")
    assert calls == {}
    calls = count_host_reads(
        tmp_path,
        4,
        36,
        "callbacks.layer_health.grad_every_n_steps=1",
        "model.steps_per_execution=4",
    )
    assert calls == {}
