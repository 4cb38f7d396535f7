"""Speed and memory of SSIMConv2d against nn.Conv2d (and the plain unfold formulation).

    python experiments/bench/layer.py [--repeats 15] [--device cpu|cuda|all] [--out outputs/bench/layer.json]

For each shape, forward + backward of every implementation is timed alternately in one process (so
machine load hits all of them alike) and the median of the repeats is kept; the number that matters is
the ratio to nn.Conv2d on the same shapes. On CUDA "ssim" is the Triton path and "ssim_inductor" the
torch.compile path beside it; "ssim_path" in each row says which path "ssim" really took. Each timing
synchronises before and after one step: that step's latency. CUDA rows also give the throughput of
50 steps issued back to back, synchronised once, as a training loop runs them
("ssim_over_conv_back_to_back": whichever is longer per step, host or GPU time, with no per-step
synchronisation latency added to both sides), the GPU's own share: the summed kernel time of one
step (profiler), the wall time of the step replayed from a CUDA graph, where no host work is
left ("ssim_over_conv_graphed"), and the step's latency with the backward on the calling thread
(``torch.autograd.set_multithreading_enabled(False)``, "ssim_over_conv_calling_thread"). Peak
memory: on CUDA the allocator's peak during one forward + backward beyond what was allocated before;
on the CPU the peak of the profiler's memory timeline over one forward + backward (every tensor
allocated in that step, compiled kernels' too).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from experiments.bench.quiet_profiler import quiet_profile  # noqa: E402
from ssimlayer import SSIMConv2d, _fusion, retain_freed_memory  # noqa: E402
from tests.reference import ssim_conv2d_unfold  # noqa: E402

# (batch, c_in, c_out, size, kernel, padding); CUDA uses batch 128.
SHAPES = [(32, 64, 64, 32, 3, 1), (32, 3, 64, 32, 7, 3), (32, 64, 64, 8, 3, 1)]
TARGETS = {"cpu": {0: 1.3, 1: 2.5}, "cuda": {0: 1.5, 1: 1.5, 2: 1.5}}
MEMORY_TARGET = 2.0
# Steps per timing for the CUDA back-to-back rows (a training loop's throughput, see time_shape).
BACK_TO_BACK = 50


class UnfoldSSIM(nn.Module):
    """The plain formulation: unfold + einsum, autograd backward (tests/reference.py)."""

    def __init__(self, layer: SSIMConv2d):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return ssim_conv2d_unfold(x, self.layer.weight, padding=self.layer.padding)


class EagerSSIM(nn.Module):
    """SSIMConv2d with the compiled elementwise path switched off: one conv plus eager elementwise."""

    def __init__(self, layer: SSIMConv2d):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        _fusion.set_fusion(False)
        try:
            return self.layer(x)
        finally:
            _fusion.set_fusion(True)


class InductorSSIM(nn.Module):
    """SSIMConv2d with the Triton kernels switched off: torch.compile of the elementwise work."""

    def __init__(self, layer: SSIMConv2d):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        enabled = _fusion.triton_enabled()  # stays off if the Triton kernels failed
        _fusion.set_triton(False)
        try:
            return self.layer(x)
        finally:
            _fusion.set_triton(enabled)


def build(impl: str, c_in: int, c_out: int, k: int, p: int, device: str) -> nn.Module:
    if impl == "conv":
        return nn.Conv2d(c_in, c_out, k, padding=p, bias=False, device=device)
    layer = SSIMConv2d(c_in, c_out, k, padding=p, device=device)
    wrappers = {"unfold": UnfoldSSIM, "ssim_eager": EagerSSIM, "ssim_inductor": InductorSSIM}
    return wrappers[impl](layer) if impl in wrappers else layer


def step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = None
    module.zero_grad(set_to_none=True)
    module(x).backward(grad)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_shape(
    shape, device: str, repeats: int, impls: list[str], steps: int = 1
) -> dict[str, list[float]]:
    """Seconds per forward + backward of each implementation, ``repeats`` timings, alternated.

    Each repeat issues ``steps`` steps and synchronises before and after them. With ``steps=1`` that
    is one step's latency; with many it is the throughput of a training loop, in which nothing waits
    for the GPU between steps, so a step costs whichever is longer, its host or its GPU time.
    """
    b, c_in, c_out, size, k, p = shape
    torch.manual_seed(0)
    x = torch.randn(b, c_in, size, size, device=device, requires_grad=True)
    modules = {impl: build(impl, c_in, c_out, k, p, device) for impl in impls}
    grad = torch.randn_like(modules["conv"](x))
    for module in modules.values():  # warm up: compile, autotune, allocator
        for _ in range(3):
            step(module, x, grad)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl, module in modules.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step(module, x, grad)
            sync(device)
            times[impl].append((time.perf_counter() - start) / steps)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {impl: statistics.median(ts) for impl, ts in times.items()}


def one_case(shape, impl: str, device: str):
    """A fresh module of ``impl`` for ``shape``, an input that requires grad, and an output grad."""
    b, c_in, c_out, size, k, p = shape
    module = build(impl, c_in, c_out, k, p, device)
    x = torch.randn(b, c_in, size, size, device=device, requires_grad=True)
    grad = torch.randn_like(module(x)).detach()
    return module, x, grad


def cuda_kernel_ms(shape, impl: str) -> float:
    """GPU time of one forward + backward: the sum of its kernels' durations (no launch gaps)."""
    module, x, grad = one_case(shape, impl, "cuda")
    for _ in range(3):
        step(module, x, grad)
    totals = []
    for _ in range(3):
        torch.cuda.synchronize()
        with quiet_profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(module, x, grad)
            torch.cuda.synchronize()
        totals.append(sum(e.self_device_time_total for e in prof.key_averages()) / 1e3)
    return statistics.median(totals)


def cuda_graph_ms(shape, impl: str, replays: int = 200) -> float | str:
    """Wall time of one forward + backward replayed from a CUDA graph: what the GPU needs, with no
    host work per step (also what a user gets who captures the step), or the error's message if
    the step cannot be captured."""
    module, x, grad = one_case(shape, impl, "cuda")
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the default stream, as capture requires
            for _ in range(3):
                step(module, x, grad)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(module, x, grad)
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / replays
    except Exception as err:  # a benchmark row, not a failure of the whole run
        torch.cuda.synchronize()
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def cuda_peak(shape, impl: str) -> int:
    module, x, grad = one_case(shape, impl, "cuda")
    step(module, x, grad)
    x.grad = None
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(module, x, grad)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def cpu_peak(shape, impl: str) -> int:
    """Peak of the profiler's CPU memory timeline over one (warm) forward + backward."""
    module, x, grad = one_case(shape, impl, "cpu")
    step(module, x, grad)
    with quiet_profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step(module, x, grad)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max(sum(s) for s in sizes)


def bench_device(device: str, repeats: int, on_row) -> None:
    """Time every shape on ``device``; ``on_row`` gets each row as soon as it is measured."""
    for index, base_shape in enumerate(SHAPES):
        shape = (128, *base_shape[1:]) if device == "cuda" else base_shape
        impls = ["conv", "ssim", "ssim_eager", "unfold"]
        if device == "cuda":
            impls.insert(2, "ssim_inductor")  # the path CUDA took before the Triton kernels
        raw = time_shape(shape, device, repeats, impls)
        times = medians(raw)
        peak = {impl: (cuda_peak if device == "cuda" else cpu_peak)(shape, impl) for impl in impls}
        if device == "cuda":
            kernel = {impl: cuda_kernel_ms(shape, impl) for impl in ("conv", "ssim")}
            graphed = {impl: cuda_graph_ms(shape, impl) for impl in ("conv", "ssim")}
            back_to_back = medians(
                time_shape(shape, device, repeats, ["conv", "ssim"], BACK_TO_BACK)
            )
            # The backward on the calling thread instead of the autograd engine's device thread,
            # which must take the GIL for the SSIM layer's Python backward (a PyTorch setting
            # any user can choose; both sides alike).
            with torch.autograd.set_multithreading_enabled(False):
                calling_thread = medians(time_shape(shape, device, repeats, ["conv", "ssim"]))
        if device == "cuda" and not _fusion.triton_enabled():
            print("WARNING: the Triton kernels failed; 'ssim' below is the torch.compile path")
        target = TARGETS[device].get(index)
        ratio = times["ssim"] / times["conv"]
        mem_ratio = peak["ssim"] / max(peak["conv"], 1)
        row = {
            "device": device,
            "batch": shape[0],
            "c_in": shape[1],
            "c_out": shape[2],
            "size": shape[3],
            "kernel": shape[4],
            "padding": shape[5],
            "conv_ms": 1e3 * times["conv"],
            "ssim_ms": 1e3 * times["ssim"],
            "unfold_ms": 1e3 * times["unfold"],
            "ssim_eager_ms": 1e3 * times["ssim_eager"],
            "ssim_eager_over_conv": times["ssim_eager"] / times["conv"],
            "ssim_over_conv": ratio,
            # The fastest repeat of each: the least disturbed by other load on the machine.
            "ssim_over_conv_fastest": min(raw["ssim"]) / min(raw["conv"]),
            "unfold_over_conv": times["unfold"] / times["conv"],
            "conv_peak_mib": peak["conv"] / 2**20,
            "ssim_peak_mib": peak["ssim"] / 2**20,
            "unfold_peak_mib": peak["unfold"] / 2**20,
            "ssim_eager_peak_mib": peak["ssim_eager"] / 2**20,
            "ssim_peak_over_conv": mem_ratio,
            "ssim_path": (
                ("triton" if _fusion.triton_enabled() else "torch.compile (Triton failed)")
                if device == "cuda"
                else "torch.compile"
            ),
            "time_target": target,
            **(
                {
                    "ssim_inductor_ms": 1e3 * times["ssim_inductor"],
                    "ssim_inductor_over_conv": times["ssim_inductor"] / times["conv"],
                    "ssim_inductor_peak_mib": peak["ssim_inductor"] / 2**20,
                    "conv_kernel_ms": kernel["conv"],
                    "ssim_kernel_ms": kernel["ssim"],
                    "ssim_over_conv_kernel_time": kernel["ssim"] / kernel["conv"],
                    "conv_back_to_back_ms": 1e3 * back_to_back["conv"],
                    "ssim_back_to_back_ms": 1e3 * back_to_back["ssim"],
                    "ssim_over_conv_back_to_back": back_to_back["ssim"] / back_to_back["conv"],
                    "conv_calling_thread_ms": 1e3 * calling_thread["conv"],
                    "ssim_calling_thread_ms": 1e3 * calling_thread["ssim"],
                    "ssim_over_conv_calling_thread": calling_thread["ssim"]
                    / calling_thread["conv"],
                    "conv_graph_ms": graphed["conv"],
                    "ssim_graph_ms": graphed["ssim"],
                    "ssim_over_conv_graphed": (
                        graphed["ssim"] / graphed["conv"]
                        if not any(isinstance(v, str) for v in graphed.values())
                        else None
                    ),
                }
                if device == "cuda"
                else {}
            ),
            "meets_time_target": None if target is None else ratio <= target,
            "meets_memory_target": mem_ratio <= MEMORY_TARGET,
        }
        print_row(row)
        on_row(row)


HEADER = (
    f"{'device':6} {'shape (B, Cin->Cout, HxW, k)':30} {'conv ms':>8} {'ssim ms':>8} "
    f"{'ssim/conv':>9} {'fastest':>7} {'target':>6} {'eager/conv':>10} {'unfold/conv':>11} "
    f"{'mem ssim/conv':>13}"
)


def print_row(r: dict) -> None:
    shape = f"{r['batch']}, {r['c_in']}->{r['c_out']}, {r['size']}x{r['size']}, k{r['kernel']}"
    target = "-" if r["time_target"] is None else f"<={r['time_target']}"
    line = (
        f"{r['device']:6} {shape:30} {r['conv_ms']:8.2f} {r['ssim_ms']:8.2f} "
        f"{r['ssim_over_conv']:9.2f} {r['ssim_over_conv_fastest']:7.2f} {target:>6} "
        f"{r['ssim_eager_over_conv']:10.2f} "
        f"{r['unfold_over_conv']:11.2f} {r['ssim_peak_over_conv']:13.2f}"
    )
    if "ssim_over_conv_kernel_time" in r:
        line += (
            f"   GPU kernel time ssim/conv {r['ssim_over_conv_kernel_time']:.2f}"
            f"   inductor/conv {r['ssim_inductor_over_conv']:.2f}"
        )
        line += f"   back-to-back ssim/conv {r['ssim_over_conv_back_to_back']:.2f}"
        graphed = r["ssim_over_conv_graphed"]
        line += f"   CUDA-graph ssim/conv {'-' if graphed is None else f'{graphed:.2f}'}"
        line += f"   calling-thread backward ssim/conv {r['ssim_over_conv_calling_thread']:.2f}"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "layer.json")
    parser.add_argument(
        "--malloc",
        choices=["retain", "default"],
        default="retain",
        help="retain: keep freed CPU memory in the process, as the training pipeline does "
        "(ssimlayer.retain_freed_memory); default: the C library's own policy",
    )
    args = parser.parse_args(argv)
    retained = args.malloc == "retain" and retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda: no CUDA device is visible")
        devices.remove("cuda")
    print(HEADER)
    rows: list[dict] = []

    def write(row: dict) -> None:  # after every row: a cut-short run keeps what it measured
        rows.append(row)
        result = {
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name() if "cuda" in devices else None,
            "repeats": args.repeats,
            "retain_freed_memory": retained,
            "timing": "forward+backward, median of repeats (ssim_over_conv_fastest: fastest "
            "repeat of each), implementations alternated in one process",
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))

    for device in devices:
        bench_device(device, args.repeats, write)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
