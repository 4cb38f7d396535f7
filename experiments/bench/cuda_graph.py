"""GPU time of a training step without the host: capture it in a CUDA graph, replay, time.

A step at the benchmark's sizes is bound by the host on a fast GPU: Python, the autograd engine and
the kernel launches take longer than the kernels. Replaying a captured CUDA graph launches every
kernel of the step at once, so the time per replay is what the GPU needs. That is also the wall time
a user gets who captures the step (``torch.cuda.graph`` or ``torch.compile(mode="reduce-overhead")``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def graphed_step_ms(step: Callable[[], None], replays: int = 200) -> float:
    """Milliseconds per replay of ``step`` (forward + backward) captured in a CUDA graph.

    ``step`` must leave the gradients to be allocated by its backward (``set_to_none``) and must not
    synchronise with the host once warmed up. Raises whatever capture raises when it cannot be
    captured (the callers record the message).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the default stream, as capture requires
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def try_graphed_step_ms(step: Callable[[], None], replays: int = 200) -> float | str:
    """:func:`graphed_step_ms`, or the error's one-line message if the step cannot be captured."""
    try:
        return graphed_step_ms(step, replays)
    except Exception as err:  # a benchmark row, not a failure of the whole run
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
