"""A whole training step (forward, loss, backward, optimiser update) replayed from a CUDA graph.

At the paper's batch size of 32 a GPU step of these networks is a few hundred microseconds of GPU
work behind a few milliseconds of host work: Python, the autograd engine, about a hundred kernel
launches (the SSIM layer's own backward runs Python on the autograd engine's device thread). A CUDA
graph records the step's kernels once and replays them with one call, so the host's per-step cost
becomes copying the batch into the graph's input buffers and one replay. This is PyTorch's "whole
network capture" (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs), per batch shape.

What the replayed step computes is what an eager step computes: the same kernels on the same
parameters and optimiser state (updated in place), with the batch copied into the graph's inputs.
What it cannot do: change anything the graph baked in. The learning rate and other optimiser
settings are read once at capture (so no LR schedule), and nothing in the step may read the device
from the host or allocate outside the graph's memory pool. Each new batch shape (the last, smaller
batch of an epoch, say) gets ``warmup`` eager steps and then its own graph.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["GraphedTrainStep", "cuda_capture"]

Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class _Captured:
    """A captured step: its input buffers, its replay, its outputs and the buffers its replays
    write the parameters' gradients into (both valid after a replay)."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        replay: Callable[[], Any],
        outputs: Any,
        grads: list[Tensor | None],
    ) -> None:
        self.x, self.y, self.replay, self.outputs, self.grads = x, y, replay, outputs, grads


def set_grads_to_none(params: Iterable[Tensor]) -> None:
    for p in params:
        p.grad = None


def cuda_capture(step: Step, params: list[Tensor], x: Tensor, y: Tensor) -> _Captured:
    """Record ``step(x, y)`` in a CUDA graph (nothing runs until the first replay).

    The gradients are None when the capture starts, so the captured backward writes fresh gradients
    into buffers of the graph's own memory at every replay instead of adding to the previous
    step's; those buffers are the ``.grad`` of ``params`` when it returns. Autocast's cache of cast
    weights is cleared and kept off while capturing: a cast cached by an eager step would otherwise
    be baked into the graph and replayed with the old weights.
    """
    set_grads_to_none(params)
    torch.clear_autocast_cache()
    graph = torch.cuda.CUDAGraph()
    device = x.device.type
    autocast = torch.autocast(
        device,
        dtype=torch.get_autocast_dtype(device),
        enabled=torch.is_autocast_enabled(device),
        cache_enabled=False,
    )
    # thread_local: only this thread is barred from calls that would break the capture, as in
    # torch.compile's CUDA graphs; another thread's (a DataLoader's pin-memory thread allocating
    # pinned memory, say) would otherwise make the capture fail.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"), autocast:
        outputs = step(x, y)
    return _Captured(x, y, graph.replay, outputs, [p.grad for p in params])


class GraphedTrainStep:
    """Run training steps eagerly for ``warmup`` steps per batch shape, then from a CUDA graph.

    Args:
        step: ``step(x, y) -> (logits, loss)`` runs the forward, the loss, ``loss.backward()`` and
            the optimiser's own ``step()``; the gradients are None when it is called.
        params: the tensors whose gradients the step writes and the optimiser reads (the model's
            parameters). After a replay each ``.grad`` is the buffer that replay wrote the step's
            gradient into, as after an eager step, for whoever reads it next (the backward and
            optimiser hooks, say). A replay by itself leaves ``.grad`` as it was: None where
            something set it to None since the capture (Lightning does before every validation),
            or another batch shape's buffer.
        warmup: eager steps per batch shape before it is captured (on a side stream, as CUDA
            graphs need; cuDNN, cuBLAS and this package's first-use checks initialise there).
        capture: ``capture(step, params, x, y)`` records the step; :func:`cuda_capture` by
            default. Tests pass a stand-in that replays by running the step eagerly.

    Calling it with a batch returns ``(logits, loss)``: for a replayed step these are the graph's
    output buffers, overwritten by the next replay of the same shape, so copy what you keep.

    If a capture fails (an operation that cannot be captured, say), it warns once with the error
    and runs every later step eagerly: the run goes on, at eager speed. Nothing of the failed step
    has run (a capture records, it does not execute), so that step is then run eagerly.

    Example::

        def step(x, y):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            return logits, loss

        train_step = GraphedTrainStep(step, model.parameters())
        for x, y in loader:
            logits, loss = train_step(x, y)
    """

    def __init__(
        self,
        step: Step,
        params: Iterable[Tensor],
        warmup: int = 3,
        capture: Callable[..., _Captured] = cuda_capture,
    ) -> None:
        if warmup < 1:
            raise ValueError(
                f"GraphedTrainStep: warmup must be >= 1 eager step before a capture, got {warmup}"
            )
        if callable(params) or isinstance(params, Tensor):
            raise TypeError(
                f"GraphedTrainStep: params must be the tensors the step updates, e.g. "
                f"model.parameters(), got {type(params).__name__}"
            )
        self.step, self.params, self.warmup, self.capture = step, list(params), warmup, capture
        self._eager_steps: Counter = Counter()  # per batch shape
        self._graphs: dict[tuple, _Captured] = {}
        self.replays = 0  # counted for tests and benchmarks
        self.failed: BaseException | None = None  # the capture error that made every step eager

    @staticmethod
    def _key(x: Tensor, y: Tensor) -> tuple:
        return (x.device, x.dtype, x.shape, x.stride(), y.dtype, y.shape, y.stride())

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        key = self._key(x, y)
        captured = self._graphs.get(key)
        if captured is None:
            if self.failed is not None or self._eager_steps[key] < self.warmup:
                self._eager_steps[key] += 1
                return self._eager(x, y)
            try:
                captured = self.capture(self.step, self.params, x.clone(), y.clone())
            except Exception as err:  # any failure: the eager step is always right
                self.failed = err
                warnings.warn(
                    f"GraphedTrainStep: capturing the training step in a CUDA graph failed "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    f"every step runs eagerly from now on (same results, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return self._eager(x, y)
            self._graphs[key] = captured
        captured.x.copy_(x, non_blocking=True)
        captured.y.copy_(y, non_blocking=True)
        captured.replay()
        for p, grad in zip(self.params, captured.grads):  # see params in the docstring
            if p.grad is not grad:
                p.grad = grad
        self.replays += 1
        return captured.outputs

    def _eager(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        # The side stream only matters before a capture; after a failed one every step is eager.
        with _side_stream(x.device) if self.failed is None else contextlib.nullcontext():
            set_grads_to_none(self.params)
            return self.step(x, y)


@contextlib.contextmanager
def _side_stream(device: torch.device):
    """Run the block on a side stream of a CUDA ``device`` (its work ordered after, and before, the
    current stream's), as the steps before a capture must; elsewhere, run it as it is."""
    if device.type != "cuda":
        yield
        return
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)
