"""The pieces that keep the training step cheap (issue #6): sync-free metrics, the batched NaN
guard, the time-based resume checkpoint, the throttled progress bar and the no-op profiler."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.profilers import PassThroughProfiler, SimpleProfiler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ssimlayer.lightning import build_callbacks
from ssimlayer.lightning.callbacks import ThrottledProgressBar
from ssimlayer.lightning.checkpointing import ResumeCheckpoint
from ssimlayer.lightning.module import TopKAccuracy, WeightedMean
from ssimlayer.lightning.profiling import NullProfiler
from ssimlayer.lightning.safety import NonFiniteLossError
from ssimlayer.train import train
from ssimlayer.utils import compose_config
from tests.test_reliability import TINY, compose_cfg, rows, stable


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_accuracy_matches_torchmetrics(k):
    torch.manual_seed(k)
    ours, theirs = TopKAccuracy(k), MulticlassAccuracy(10, top_k=k, average="micro")
    for n in (7, 32, 1):  # odd and one-sample batches
        logits, target = torch.randn(n, 10), torch.randint(0, 10, (n,))
        ours.update(logits, target)
        theirs.update(logits, target)
    torch.testing.assert_close(ours.compute(), theirs.compute())


def test_weighted_mean_matches_torchmetrics_mean_metric():
    ours, theirs = WeightedMean(), MeanMetric()
    for value, weight in ((2.0, 32), (1.0, 32), (5.0, 3)):  # a short last batch
        ours.update(torch.tensor(value), weight)
        theirs.update(torch.tensor(value), weight=weight)
    torch.testing.assert_close(ours.compute(), theirs.compute())
    assert set(ours.metric_state) == set(theirs.metric_state)  # old checkpoints load


@pytest.mark.parametrize("metric", [TopKAccuracy(2), WeightedMean()], ids=["topk", "mean"])
def test_reset_keeps_the_state_tensors_that_a_cuda_graph_adds_into(metric):
    if isinstance(metric, TopKAccuracy):
        metric.update(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    else:
        metric.update(torch.tensor(3.0), 4)
    before = {name: getattr(metric, name) for name in metric._defaults}
    metric.reset()
    for name, tensor in before.items():
        assert getattr(metric, name) is tensor and tensor.item() == 0.0
    assert metric._update_count == 0 and metric._computed is None


def test_accumulate_is_update_without_the_bookkeeping():
    logits, target = torch.randn(6, 5), torch.randint(0, 5, (6,))
    updated, accumulated = TopKAccuracy(2), TopKAccuracy(2)
    updated.update(logits, target)
    accumulated.accumulate(logits, target)
    assert accumulated._update_count == 0 and updated._update_count == 1
    assert torch.equal(updated.correct, accumulated.correct)
    assert torch.equal(updated.total, accumulated.total)


def test_topk_accuracy_rejects_k_below_one():
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        TopKAccuracy(0)


def test_guard_checked_every_n_steps_saves_the_last_finite_state_before_the_bad_step(tmp_path):
    # lr 1e3 diverges after a few steps; the losses are read only every 5 steps, so the NaN is seen
    # late, and the checkpoint is the state at the last clean check, not a NaN one.
    cfg = compose_cfg(
        tmp_path / "run",
        *TINY,
        "model=shallow_conv",
        "model.optimizer.lr=1e3",
        "model.optimizer.momentum=0.0",
        "callbacks.last_checkpoint.every_n_train_steps=0",
        "callbacks.nonfinite_guard.check_every_n_steps=5",
    )
    with pytest.raises(NonFiniteLossError, match=r"at global step (\d+) ") as e:
        train(cfg)
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("nonfinite-step*.ckpt")
    bad = int(ckpt.stem.removeprefix("nonfinite-step"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] <= bad and state["global_step"] % 5 == 0  # a check's state
    assert f"(global step {state['global_step']})" in str(e.value)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # no NaN state written
    # The saved state resumes exactly: checked every step, the same run meets the same bad step.
    # (The optimiser state, learning rate included, comes back with it.)
    with pytest.raises(NonFiniteLossError, match=rf"at global step {bad} .*seen 0 step"):
        train(
            compose_cfg(
                tmp_path / "resumed",
                *TINY,
                "model=shallow_conv",
                "model.optimizer.lr=1e3",
                "model.optimizer.momentum=0.0",
                "callbacks.nonfinite_guard.check_every_n_steps=1",
                f"ckpt_path={ckpt}",
            )
        )


def test_guard_checked_every_step_keeps_the_old_exact_contract(tmp_path):
    cfg = compose_cfg(
        tmp_path / "run",
        *TINY,
        "model=shallow_conv",
        "model.optimizer.lr=1e30",
        "model.optimizer.momentum=0.0",
        "callbacks.nonfinite_guard.check_every_n_steps=1",
    )
    with pytest.raises(NonFiniteLossError, match=r"seen 0 step\(s\) later"):
        train(cfg)
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("nonfinite-step*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == int(ckpt.stem.removeprefix("nonfinite-step"))  # just before


def test_resume_checkpoint_every_n_seconds(tmp_path, monkeypatch):
    # A clock that advances 1 s per call: with every_n_seconds=2.5 a step checkpoint falls due
    # every few steps, with no step interval at all.
    clock = iter(range(10_000))
    monkeypatch.setattr("ssimlayer.lightning.checkpointing.time.monotonic", lambda: next(clock))
    saved = []
    monkeypatch.setattr(
        ResumeCheckpoint, "_save", lambda self, trainer: saved.append(trainer.global_step)
    )
    cfg = compose_cfg(
        tmp_path / "run",
        *TINY,
        "~callbacks.fgsm_sweep",
        "callbacks.last_checkpoint.every_n_train_steps=null",
        "callbacks.last_checkpoint.every_n_seconds=2.5",
    )
    train(cfg)
    mid_epoch = [s for s in saved if s % 8]
    assert len(mid_epoch) >= 3 and saved.count(8) == 1 and saved[-1] == 16, saved


def test_resume_checkpoint_rejects_a_negative_interval(tmp_path):
    with pytest.raises(ValueError, match="every_n_seconds must be >= 0 or null, got -1"):
        ResumeCheckpoint(str(tmp_path), every_n_seconds=-1)


def test_progress_bar_redraws_by_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("ssimlayer.lightning.callbacks.time.monotonic", lambda: now[0])
    bar = ThrottledProgressBar(min_interval_s=1.0)
    drawn = []
    for step in range(1, 11):
        now[0] = step * 0.3
        if bar._should_update(step, 10):
            drawn.append(step)
    assert drawn == [1, 5, 9, 10]  # t = 0.3, 1.5, 2.7: >= 1 s apart; the last batch always


def test_default_callbacks_have_the_throttled_bar_unless_the_bar_is_off():
    on = compose_config("train", overrides=["paths.output_dir=/tmp/x"])
    off = compose_config(
        "train", overrides=["paths.output_dir=/tmp/x", "trainer.enable_progress_bar=false"]
    )
    bars = [c for c in build_callbacks(on) if isinstance(c, ProgressBar)]
    assert len(bars) == 1 and isinstance(bars[0], ThrottledProgressBar)
    assert not [c for c in build_callbacks(off) if isinstance(c, ProgressBar)]
    assert not [c for c in build_callbacks(on, skip=["progress_bar"]) if isinstance(c, ProgressBar)]
    assert isinstance(bars[0], pl.Callback)


def test_default_trainer_has_the_null_profiler_and_simple_still_profiles(tmp_path):
    default = instantiate(compose_cfg(tmp_path / "a", *TINY).trainer, logger=False)
    assert isinstance(default.profiler, NullProfiler)
    profiler = default.profiler
    assert profiler.profile("a") is profiler.profile("b")  # one shared object, nothing recorded
    simple = instantiate(
        compose_cfg(tmp_path / "b", *TINY, "trainer.profiler=simple").trainer, logger=False
    )
    assert isinstance(simple.profiler, SimpleProfiler)
    lightning = instantiate(
        compose_cfg(tmp_path / "c", *TINY, "trainer.profiler=null").trainer, logger=False
    )
    assert type(lightning.profiler) is PassThroughProfiler  # Lightning's own default


def test_null_profiler_trains_exactly_as_lightnings_default_profiler(tmp_path):
    runs = {}
    for name, profiler in (("null", []), ("lightning", ["trainer.profiler=null"])):
        out = tmp_path / name
        metrics = train(compose_cfg(out, *TINY, "~callbacks.fgsm_sweep", *profiler))
        state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        runs[name] = (stable(metrics), rows(out / "epochs.csv"), state)
    (m1, r1, s1), (m2, r2, s2) = runs["null"], runs["lightning"]
    assert m1["global_step"] == 16 and m1 == m2 and r1 == r2
    assert s1["state_dict"].keys() == s2["state_dict"].keys()
    assert all(torch.equal(v, s2["state_dict"][k]) for k, v in s1["state_dict"].items())
    momentum = [s["optimizer_states"][0]["state"] for s in (s1, s2)]
    assert momentum[0].keys() == momentum[1].keys() and momentum[0]
    assert all(
        torch.equal(momentum[0][i]["momentum_buffer"], momentum[1][i]["momentum_buffer"])
        for i in momentum[0]
    )
