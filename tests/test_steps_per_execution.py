"""``model.steps_per_execution = k``: k optimiser steps per Lightning iteration, same training.

The option only changes how many batches one Lightning iteration carries, so a run with k > 1 must
train exactly as the same run with k = 1: same batches, same updates, same metrics, same
checkpoints' contents, same resume. Runs are the tiny ones of ``tests/test_reliability.py``.
"""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssimlayer.data import BatchGroups, DeviceLoader
from ssimlayer.lightning import ClassifierModule
from ssimlayer.lightning.checkpointing import CheckpointMismatchError
from ssimlayer.lightning.safety import NonFiniteLossError
from ssimlayer.train import train
from tests.test_reliability import TINY, compose_cfg, rows, stable

RESIDENT = (*TINY, "data.device_resident=true", "~callbacks.fgsm_sweep")


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


# --- BatchGroups ------------------------------------------------------------------------------


def test_batch_groups_hand_out_every_batch_once_in_order():
    loader = DeviceLoader(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10), 2)
    groups = list(BatchGroups(loader, 2))
    assert [len(g) for g in groups] == [2, 2, 1] and len(BatchGroups(loader, 2)) == 3
    labels = torch.cat([y for group in groups for _, y in group])
    assert sorted(labels.tolist()) == list(range(10))


def test_batch_groups_pass_the_sampler_and_the_loader_state_through():
    loader = DeviceLoader(torch.zeros(12, 1, 2, 2, dtype=torch.uint8), torch.arange(12), 2)
    groups = BatchGroups(loader, 2)
    assert groups.sampler is loader.sampler
    it = iter(groups)
    first = next(it)
    state = groups.state_dict()
    assert state == {"epoch": 0, "batches_consumed": 2}  # a group is handed out whole
    rest = [y for group in it for _, y in group]

    again = BatchGroups(DeviceLoader(loader.images, loader.labels, 2), 2)
    again.load_state_dict(state)
    resumed = [y for group in again for _, y in group]
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(rest, resumed, strict=True))


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_batch_groups_reject_a_bad_group_size(k):
    with pytest.raises(ValueError, match="k .batches per group. must be an int >= 1"):
        BatchGroups([1, 2], k)


@pytest.mark.parametrize("k", [0, 2.0])
def test_module_rejects_a_bad_steps_per_execution(k):
    with pytest.raises(ValueError, match="steps_per_execution must be an int >= 1"):
        ClassifierModule(nn.Linear(2, 2), optimizer=torch.optim.SGD, steps_per_execution=k)


# --- same training ----------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["device_resident", "dataloader"])
def test_k_steps_per_iteration_train_exactly_as_one(tmp_path, loader):
    # 8 batches per epoch, groups of 3 (the last one short): same weights and metrics as k = 1.
    base = RESIDENT if loader == "device_resident" else (*TINY, "~callbacks.fgsm_sweep")
    one = train(compose_cfg(tmp_path / "one", *base))
    three = train(compose_cfg(tmp_path / "three", *base, "model.steps_per_execution=3"))
    assert one["global_step"] == three["global_step"] == 16
    assert stable(one) == stable(three)
    assert rows(tmp_path / "one" / "epochs.csv") == rows(tmp_path / "three" / "epochs.csv")
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "three")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_casts_the_updated_weights_at_every_step(tmp_path):
    # Lightning's autocast spans the whole training_step, k steps here. Had it autocast's cache of
    # bf16 weight copies on (torch's default; Lightning turns it off), steps 2..k would run on the
    # weights of the group's first step.
    bf16 = (*RESIDENT, "trainer.precision=bf16-mixed")
    train(compose_cfg(tmp_path / "one", *bf16))
    train(compose_cfg(tmp_path / "three", *bf16, "model.steps_per_execution=3"))
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "three")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


SCHEDULED = (
    "+model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
    "+model.scheduler._partial_=true",
    "+model.scheduler.step_size=1",
    "+model.scheduler.gamma=0.5",
)


def test_epoch_schedulers_step_as_in_automatic_optimisation(tmp_path):
    sched = SCHEDULED
    train(compose_cfg(tmp_path / "one", *RESIDENT, *sched))
    train(compose_cfg(tmp_path / "four", *RESIDENT, *sched, "model.steps_per_execution=4"))
    for run in ("one", "four"):
        ckpt = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01 / 4)
        assert ckpt["lr_schedulers"][0]["last_epoch"] == 2
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "four")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def tiny_loader(n: int) -> DataLoader:
    """``n`` random 4-feature samples of 3 classes in batches of 4."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


@pytest.mark.parametrize("k", [1, 4])
def test_resume_from_an_epoch_end_keeps_the_schedule(tmp_path, k):
    # The epoch-end checkpoint is written before the epoch's scheduler step; the resumed run must
    # still take it, as an uninterrupted run does.
    run = (*RESIDENT, *SCHEDULED, f"model.steps_per_execution={k}")
    train(compose_cfg(tmp_path / "first", *run, "trainer.max_epochs=1"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(compose_cfg(tmp_path / "resumed", *run, f"ckpt_path={ckpt}"))
    train(compose_cfg(tmp_path / "reference", *run))
    resumed, reference = (
        torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("resumed", "reference")
    )
    assert resumed["global_step"] == reference["global_step"] == 16
    for state in (resumed, reference):
        assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01 / 4)
    for name, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)


class StepScheduled(ClassifierModule):
    """A scheduler stepped every second optimiser step (``interval="step"``, ``frequency=2``)."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
        config = {"scheduler": scheduler, "interval": "step", "frequency": 2}
        return {"optimizer": optimizer, "lr_scheduler": config}


@pytest.mark.parametrize("k", [1, 3])
def test_step_schedulers_step_with_their_frequency(k):
    batches = tiny_loader(40)  # 10 steps
    model = StepScheduled(nn.Linear(4, 3), optimizer=None, num_classes=3, steps_per_execution=k)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, BatchGroups(batches, k) if k > 1 else batches)
    assert trainer.global_step == 10
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.9**5)


def test_max_steps_stops_inside_a_group(tmp_path):
    out = train(
        compose_cfg(
            tmp_path / "run", *RESIDENT, "model.steps_per_execution=4", "+trainer.max_steps=10"
        )
    )
    assert out["global_step"] == 10


# --- checkpoints and resume -------------------------------------------------------------------


# A crash mid-group resumed exactly: tests/test_reliability.py
# (test_crash_mid_epoch_then_resume_with_the_device_resident_loader, steps_per_execution=4).


def test_resuming_across_one_and_many_steps_per_iteration_is_a_clear_error(tmp_path):
    first = tmp_path / "first"
    train(compose_cfg(first, *RESIDENT, "trainer.max_epochs=1"))
    ckpt = first / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match="written with steps_per_execution=1"):
        train(
            compose_cfg(
                tmp_path / "second", *RESIDENT, "model.steps_per_execution=4", f"ckpt_path={ckpt}"
            )
        )


def test_ungrouped_loader_is_a_clear_error():
    batches = tiny_loader(8)
    model = ClassifierModule(
        nn.Linear(4, 3),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        num_classes=3,
        steps_per_execution=2,
    )
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(TypeError, match=r"BatchGroups\(loader, 2\)"):
        trainer.fit(model, batches)


def test_gradient_clipping_with_many_steps_per_iteration_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="gradient clipping is not supported for manual"):
        train(
            compose_cfg(
                tmp_path / "run",
                *RESIDENT,
                "model.steps_per_execution=2",
                "+trainer.gradient_clip_val=1.0",
            )
        )


def test_nan_guard_names_the_same_bad_step_and_keeps_a_finite_state(tmp_path):
    # The guard sees each step's loss (manual_backward calls its hook); the state it saves is from
    # a group end, the last one whose losses were all finite.
    diverging = (
        *RESIDENT,
        "model=shallow_conv",
        "model.optimizer.lr=1e30",
        "model.optimizer.momentum=0.0",
        "callbacks.nonfinite_guard.check_every_n_steps=1",
    )
    found = {}
    for k in (1, 4):
        run = tmp_path / f"k{k}"
        cfg = compose_cfg(run, *diverging, f"model.steps_per_execution={k}")
        with pytest.raises(NonFiniteLossError, match=r"at global step (\d+) ") as e:
            train(cfg)
        found[k] = int(re.search(r"at global step (\d+) ", str(e.value)).group(1))
        (ckpt,) = (run / "checkpoints").glob("nonfinite-step*.ckpt")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["global_step"] <= found[k]
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert found[1] == found[4]
