"""``model.cuda_graph``: training steps replayed from a CUDA graph train as eager steps do.

A CUDA graph needs a GPU, so on the CPU these tests replace the capture by a stand-in that behaves
as one towards the rest of the program: its "replay" runs the captured step eagerly on the graph's
input buffers, writes fresh gradients into gradient buffers of its own (as the real graph, captured
with no gradients, does) and leaves every ``.grad`` attribute as it found it (a replay does not
touch Python objects). Everything else runs as on a GPU: the eager warm-up steps per batch shape,
the copies into the input buffers, Lightning's step counts and hooks (and its setting the
gradients to None before each validation), the metrics. What only a GPU checks (the capture itself)
runs in ``tests/test_gpu.py``.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssimlayer.lightning import ClassifierModule
from ssimlayer.lightning.checkpointing import CheckpointMismatchError
from ssimlayer.lightning.graphed_step import GraphedTrainStep, _Captured
from ssimlayer.lightning.safety import NonFiniteLossError
from ssimlayer.train import train
from tests.test_reliability import compose_cfg, rows, stable
from tests.test_steps_per_execution import RESIDENT, final_weights


def eager_capture(step, params, x, y):
    """Stand-in for ``cuda_capture``: nothing runs at capture, which leaves each ``.grad`` a buffer
    of the graph's; each replay runs the step with its gradients written (fresh) into those buffers
    and leaves the ``.grad`` attributes as they were."""
    grads = [torch.zeros_like(p) for p in params]
    for p, grad in zip(params, grads):
        p.grad = grad
    captured = _Captured(x, y, None, None, grads)

    def replay():
        seen = [p.grad for p in params]
        for p, grad in zip(params, grads):
            p.grad = grad.zero_()
        captured.outputs = step(captured.x, captured.y)
        for p, grad, before in zip(params, grads, seen):
            if p.grad is not grad:  # the backward added into the buffer in place, as a graph does
                grad.copy_(p.grad)
            p.grad = before

    captured.replay = replay
    return captured


def sgd_training(model, lr=0.1, bf16_autocast=False):
    """The model, its SGD (momentum 0.9, weight decay 1e-4) and a ``step(x, y)`` for
    GraphedTrainStep: cross-entropy, backward, update (autocast to bf16 if asked, on the model's
    device type)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    device_type = next(model.parameters()).device.type

    def step(x, y):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16_autocast):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return logits.detach(), loss.detach()

    return model, opt, step


def _linear_and_step():
    torch.manual_seed(0)
    return sgd_training(nn.Linear(4, 3))


def _batches(sizes):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def test_replayed_steps_update_as_eager_steps():
    batches = _batches([5, 5, 5, 5, 5, 2, 5, 2, 2, 5])
    model, opt, step = _linear_and_step()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        step(x, y)
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt, step = _linear_and_step()
    graphed = GraphedTrainStep(step, model.parameters(), 2, eager_capture)
    losses = [graphed(x, y)[1].clone() for x, y in batches]
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want)
    # Batches of 5: 2 eager, then 5 replays; batches of 2: 2 eager, then 1 replay.
    assert graphed.replays == 6
    assert all(torch.isfinite(loss) for loss in losses)


def test_after_a_replay_each_grad_is_that_steps_gradient():
    # A replay leaves .grad as it was; GraphedTrainStep makes it the replayed step's gradient, also
    # where something set it to None in between (Lightning does before each validation, which made
    # LayerHealth's gradient ratio NaN after epoch 1 on an H200) or another shape's graph ran last.
    batches = _batches([5, 5, 2, 2, 5, 2])
    model, opt, step = _linear_and_step()
    alone, alone_opt, alone_step = _linear_and_step()
    graphed = GraphedTrainStep(step, model.parameters(), 1, eager_capture)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        graphed(x, y)
        alone_opt.zero_grad(set_to_none=True)
        alone_step(x, y)
        for p, q in zip(model.parameters(), alone.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
    assert graphed.replays == 4


def test_params_must_be_tensors():
    with pytest.raises(TypeError, match=r"params must be the tensors the step updates"):
        GraphedTrainStep(lambda x, y: (x, y), lambda: None)


def test_replays_return_the_graphs_output_buffers():
    model, opt, step = _linear_and_step()
    graphed = GraphedTrainStep(step, model.parameters(), 1, eager_capture)
    (x, y), (x2, y2) = _batches([4, 4])
    graphed(x, y)  # eager
    first = graphed(x, y)
    assert graphed._graphs and first is next(iter(graphed._graphs.values())).outputs
    # The batch is copied into the graph's input buffers, not used in place.
    graphed(x2, y2)
    captured = next(iter(graphed._graphs.values()))
    assert torch.equal(captured.x, x2) and captured.x.data_ptr() != x2.data_ptr()


def test_a_failed_capture_warns_and_trains_on_eagerly():
    batches = _batches([5] * 6)
    model, opt, step = _linear_and_step()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        step(x, y)
    expected = [p.detach().clone() for p in model.parameters()]

    def failing_capture(step, params, x, y):
        raise RuntimeError("operation not permitted when stream is capturing")

    model, opt, step = _linear_and_step()
    graphed = GraphedTrainStep(step, model.parameters(), 2, failing_capture)
    with pytest.warns(RuntimeWarning, match="operation not permitted when stream is capturing"):
        for x, y in batches:
            graphed(x, y)
    assert graphed.replays == 0 and isinstance(graphed.failed, RuntimeError)
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want)


def test_warmup_must_be_positive():
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedTrainStep(lambda x, y: (x, y), [], warmup=0)


# --- through Lightning ----------------------------------------------------------------------


@pytest.fixture
def cpu_graphs(monkeypatch):
    """The graphed path on the CPU, with the stand-in capture; counts captures and replays."""
    counts = {"captures": 0, "replays": 0}

    def counting_capture(step, params, x, y):
        counts["captures"] += 1
        captured = eager_capture(step, params, x, y)
        replay = captured.replay

        def counted():
            counts["replays"] += 1
            replay()

        captured.replay = counted
        return captured

    monkeypatch.setattr(ClassifierModule, "_graph_capture", staticmethod(counting_capture))
    monkeypatch.setattr(ClassifierModule, "_graph_device_types", ("cpu",))
    return counts


@pytest.mark.parametrize("k", [1, 3])
def test_graphed_training_matches_eager_training(tmp_path, cpu_graphs, k):
    # 8 batches per epoch, 2 epochs: 3 eager steps, then 13 replays.
    eager = train(compose_cfg(tmp_path / "eager", *RESIDENT))
    graphed = train(
        compose_cfg(
            tmp_path / "graphed",
            *RESIDENT,
            "model.cuda_graph=true",
            f"model.steps_per_execution={k}",
        )
    )
    assert eager["global_step"] == graphed["global_step"] == 16
    # One shape (8 batches of 8): 3 eager steps, one capture, 13 replays.
    assert cpu_graphs == {"captures": 1, "replays": 13}
    assert stable(eager) == stable(graphed)
    assert rows(tmp_path / "eager" / "epochs.csv") == rows(tmp_path / "graphed" / "epochs.csv")
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "graphed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_nan_guard_sees_every_replayed_step(tmp_path, cpu_graphs):
    diverging = (
        *RESIDENT,
        "model=shallow_conv",
        "model.optimizer.lr=1e30",
        "model.optimizer.momentum=0.0",
        "model.cuda_graph_warmup=1",
        "callbacks.nonfinite_guard.check_every_n_steps=1",
    )
    found = {}
    for graph in ("false", "true"):
        cfg = compose_cfg(tmp_path / graph, *diverging, f"model.cuda_graph={graph}")
        with pytest.raises(NonFiniteLossError, match=r"at global step (\d+) ") as e:
            train(cfg)
        found[graph] = int(re.search(r"at global step (\d+) ", str(e.value)).group(1))
    assert found["false"] == found["true"]


def test_on_a_cpu_it_warns_and_trains_eagerly(tmp_path):
    with pytest.warns(RuntimeWarning, match="model.cuda_graph=true needs a CUDA device"):
        out = train(compose_cfg(tmp_path / "run", *RESIDENT, "model.cuda_graph=true"))
    assert out["global_step"] == 16


@pytest.mark.parametrize(
    "override,problem",
    [
        ("+model.scheduler._target_=torch.optim.lr_scheduler.StepLR", "an LR scheduler"),
        ("trainer.precision=16-true", "precision 16-true"),
        ("model.cuda_graph_warmup=0", "cuda_graph_warmup=0"),
        ("model.compile=reduce-overhead", "model.compile=reduce-overhead"),
    ],
)
def test_what_a_graph_cannot_replay_is_a_clear_error(tmp_path, cpu_graphs, override, problem):
    extra = (override,)
    if "scheduler" in override:
        extra += ("+model.scheduler._partial_=true", "+model.scheduler.step_size=1")
    with pytest.raises(ValueError, match=f"model.cuda_graph=true cannot run with {problem}"):
        train(compose_cfg(tmp_path / "run", *RESIDENT, "model.cuda_graph=true", *extra))


def test_a_graphed_run_resumes_exactly(tmp_path, cpu_graphs):
    # One epoch, then resumed for the second: after the resume the warm-up and capture start again.
    graphed = (*RESIDENT, "model.cuda_graph=true")
    train(compose_cfg(tmp_path / "first", *graphed, "trainer.max_epochs=1"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(compose_cfg(tmp_path / "resumed", *graphed, f"ckpt_path={ckpt}"))
    whole = train(compose_cfg(tmp_path / "whole", *graphed))
    assert resumed["global_step"] == whole["global_step"] == 16
    a, b = final_weights(tmp_path / "resumed"), final_weights(tmp_path / "whole")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resuming_a_graphed_run_with_automatic_optimisation_is_a_clear_error(tmp_path, cpu_graphs):
    train(
        compose_cfg(tmp_path / "first", *RESIDENT, "model.cuda_graph=true", "trainer.max_epochs=1")
    )
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match="cuda_graph=true; resume it with"):
        train(compose_cfg(tmp_path / "second", *RESIDENT, f"ckpt_path={ckpt}"))
