"""Where a GPU step's time goes when it is bound by the host: time per call of each piece, CUDA only.

    python experiments/bench/host_overhead.py [--out outputs/bench/host_overhead.json]

At the benchmark's shapes a convolution's forward and backward take well under a millisecond of GPU
time, so what the host spends launching work decides the wall time. Each row issues one operation
many times without synchronising (the GPU work of these shapes is shorter than its launch, so the
loop measures the host) and reports microseconds per call. The shape is the benchmark's smallest
(128, 64->64, 8x8, k3).

The rows include the forward and the SSIM step with the kernels that compute Sxy themselves
(``set_fused_conv``: one launch per forward instead of a convolution and a launch), and the
backward and the step with the convolution's backward inside the backward's last kernel too
(``set_conv_backward``: no cuDNN call in the step at all).

Beside the per-call rows it stores what splits a step's time between host and GPU:

- the SSIM step and its forward with every Triton launch through Triton's JIT, as before the
  direct launch of compiled kernels (``ssimlayer._triton_launch.Launcher``);
- the conv and SSIM steps with the backward on the calling thread
  (``torch.autograd.set_multithreading_enabled(False)``) instead of the autograd engine's CUDA
  device thread, which must take the GIL to run the SSIM layer's Python backward;
- the GPU time of each step, from replaying it captured in a CUDA graph (``cuda_graph.py``);
- the same for a step through one trivial node, a Python autograd Function that passes the
  gradient on against a C++ one (``view_as``): what handing any Python backward to the device
  thread costs, apart from what the SSIM layer's backward does;
- a cProfile of 300 SSIM steps with the backward on the calling thread (cProfile sees one thread
  only), the 30 functions with the most own time;
- torch.profiler tables of 50 SSIM steps: every thread's operators by own host time, and the
  kernels by GPU time.

    python experiments/bench/host_overhead.py --python-only [--device cpu]

times the Triton path's Python alone, on any device: the Triton kernels are replaced by stubs that
return empty tensors of the right shapes (no launch, no convolution), so what remains is
``ssim_conv2d``'s checks and dispatch, the autograd Function and the engine. A bare autograd
Function around the same stubs runs alternately with it: the difference is this package's own
Python. This is how changes to that Python are measured without a GPU.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from experiments.bench.cuda_graph import try_graphed_step_ms  # noqa: E402
from experiments.bench.quiet_profiler import quiet_profile  # noqa: E402
from ssimlayer import SSIMConv2d, _fusion  # noqa: E402


def per_call_us(fn, calls: int = 300, repeats: int = 7) -> float:
    for _ in range(20):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def top_own_time(fn, calls: int = 300, rows: int = 30) -> list[str]:
    """cProfile of ``calls`` calls of ``fn``: the ``rows`` functions with the most own time."""
    fn()
    sync()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        fn()
    sync()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(rows)
    return [line.rstrip() for line in text.getvalue().splitlines() if line.strip()]


class StubKernels:
    """Stands in for :mod:`ssimlayer._triton_eq8`: outputs of the right shapes, no work at all."""

    @staticmethod
    def eq8_forward(x, w, c1, c2, geometry, save_sxy):
        stride, padding, dilation, groups = geometry
        b, _, h, w_in = x.shape
        c_out, _, kh, kw = w.shape
        sizes = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip((h, w_in), (kh, kw), stride, padding, dilation)
        ]
        out = x.new_empty(b, c_out, *sizes)
        box = x.new_empty(b, 2 * groups, *sizes)
        return out, box, x.new_empty(2, c_out), (out if save_sxy else None)

    @staticmethod
    def eq8_backward(x, w, box, ystat, s_xy, grad_out, c1, c2, geometry, needs):
        return (
            torch.empty_like(x) if needs[0] else None,
            torch.empty_like(w) if needs[1] else None,
        )


_GEOMETRY = ((1, 1), (1, 1), (1, 1), 1)


class _BareFunction(torch.autograd.Function):
    """The least an autograd Function around the stub kernels can cost: the floor for ours."""

    @staticmethod
    def forward(ctx, x, w):
        out, box, ystat, s_xy = StubKernels.eq8_forward(x, w, 1e-4, 9e-4, _GEOMETRY, True)
        ctx.save_for_backward(x, w, box, ystat, s_xy)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, box, ystat, s_xy = ctx.saved_tensors
        return StubKernels.eq8_backward(x, w, box, ystat, s_xy, grad_out, 0, 0, _GEOMETRY, (1, 1))


def alternated_us(fns: dict, calls: int = 200, rounds: int = 30) -> dict[str, float]:
    """Microseconds per call of each function, the functions alternated round by round in one
    process (so that machine load hits all alike); the fastest round of each is kept, the
    least disturbed measure of a fixed amount of Python work."""
    for fn in fns.values():
        for _ in range(calls):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: min(ts) for name, ts in times.items()}


class _PassOn(torch.autograd.Function):
    """The smallest Python backward: the gradient passed on unchanged."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out


def trivial_steps(x: torch.Tensor, grad: torch.Tensor) -> dict:
    """A step through one Python node and one through one C++ node (``view_as``)."""

    def python_node():
        x.grad = None
        _PassOn.apply(x).backward(grad)

    def cpp_node():
        x.grad = None
        x.view_as(x).backward(grad)

    return {"one Python autograd node": python_node, "one C++ autograd node": cpp_node}


def python_only(device: str, out: Path) -> None:
    """Host time of the Triton path's Python with stub kernels (see the module docstring)."""
    from ssimlayer import functional
    from ssimlayer._fusion import triton_checks

    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 4, device=device, requires_grad=True)
    grad = torch.randn(2, 4, 4, 4, device=device)
    ssim = SSIMConv2d(4, 4, 3, padding=1, device=device)
    real = functional.triton_eq8
    functional.triton_eq8 = lambda x, w: StubKernels
    try:
        config = functional._triton_config(x, ssim.weight, _GEOMETRY)
        for kind in ("forward", "backward"):  # as if the first-use checks had passed
            triton_checks.record(kind, config, True)

        def step():
            x.grad = None
            ssim.zero_grad(set_to_none=True)
            ssim(x).backward(grad)

        def bare_step():
            x.grad = None
            ssim.zero_grad(set_to_none=True)
            _BareFunction.apply(x, ssim.weight).backward(grad)

        def forward():
            with torch.no_grad():
                ssim(x)

        def bare_forward():
            with torch.no_grad():
                StubKernels.eq8_forward(x, ssim.weight, 1e-4, 9e-4, _GEOMETRY, False)

        rows = alternated_us(
            {
                "ssim forward (no grad), stub kernels": forward,
                "stub forward alone (no grad)": bare_forward,
                "ssim forward+backward step, stub kernels": step,
                "bare autograd Function step, same stubs": bare_step,
            }
        )
        rows["ssim step over bare Function step"] = (
            rows["ssim forward+backward step, stub kernels"]
            - rows["bare autograd Function step, same stubs"]
        )
        profile = top_own_time(step, calls=2000)
    finally:
        functional.triton_eq8 = real
        triton_checks.reset()
    for name, us in rows.items():
        print(f"{name:42s} {us:8.1f} us")
    print("\n".join(profile[:20]))
    write(out, {"device": device, "us_per_call": rows, "cprofile_step_top": profile})


def write(out: Path, result: dict) -> None:
    result = {"torch": torch.__version__, **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "bench" / "host_overhead.json"
    )
    parser.add_argument(
        "--python-only",
        action="store_true",
        help="the Triton path's Python with stub kernels, on --device (no GPU needed)",
    )
    parser.add_argument("--device", default="cpu", help="for --python-only")
    args = parser.parse_args(argv)
    if args.python_only:
        python_only(args.device, args.out)
        return
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (or --python-only)")
    import triton

    from ssimlayer import _triton_eq8

    @triton.jit
    def _noop_kernel(x_ptr):
        pass

    torch.manual_seed(0)
    x = torch.randn(128, 64, 8, 8, device="cuda", requires_grad=True)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False, device="cuda")
    ssim = SSIMConv2d(64, 64, 3, padding=1, device="cuda")
    grad = torch.randn(128, 64, 8, 8, device="cuda")
    w = ssim.weight.detach()
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    saved = _triton_eq8.eq8_forward(x.detach(), w, 1e-4, 9e-4, geometry, True)

    def step(module):
        def run():
            x.grad = None
            module.zero_grad(set_to_none=True)
            module(x).backward(grad)

        return run

    def without_triton(fn):
        def run():
            _fusion.set_triton(False)
            try:
                fn()
            finally:
                _fusion.set_triton(True)

        return run

    def jit_launches(fn):
        """``fn`` with every Triton launch through the JIT (the direct launch of a compiled
        kernel off, as before it existed): the pair of rows shows what the direct launch saves."""

        def run():
            previous = _triton_eq8.set_direct_launch(False)
            try:
                fn()
            finally:
                _triton_eq8.set_direct_launch(previous)

        return run

    rows = {}
    with torch.no_grad():
        rows["conv forward (no grad)"] = per_call_us(lambda: conv(x))
        rows["ssim forward (no grad, Triton)"] = per_call_us(lambda: ssim(x))
        rows["F.conv2d alone"] = per_call_us(lambda: torch.nn.functional.conv2d(x, w, None, 1, 1))
        rows["eq8_forward: conv + forward kernel"] = per_call_us(
            lambda: _triton_eq8.eq8_forward(x, w, 1e-4, 9e-4, geometry, True)
        )
        rows["eq8_forward, its launch through Triton's JIT"] = per_call_us(
            jit_launches(lambda: _triton_eq8.eq8_forward(x, w, 1e-4, 9e-4, geometry, True))
        )
        rows["one Triton launch of an empty kernel"] = per_call_us(lambda: _noop_kernel[(1,)](x))
        rows["eq8_backward: 2 Triton launches + convolution_backward"] = per_call_us(
            lambda: _triton_eq8.eq8_backward(
                x, w, saved[1], saved[2], saved[3], grad, 1e-4, 9e-4, geometry, (True, True)
            )
        )
        rows["aten.convolution_backward alone"] = per_call_us(
            lambda: torch.ops.aten.convolution_backward(
                grad, x, w, None, (1, 1), (1, 1), (1, 1), False, [0, 0], 1, [True, True, False]
            )
        )
        rows["torch.empty"] = per_call_us(lambda: torch.empty(128, 64, 8, 8, device="cuda"))
    rows["conv forward+backward step"] = per_call_us(step(conv))
    rows["ssim forward+backward step (Triton)"] = per_call_us(step(ssim))
    rows["ssim forward+backward step (Triton, launches through the JIT)"] = per_call_us(
        jit_launches(step(ssim))
    )
    rows["ssim forward+backward step (torch.compile)"] = per_call_us(without_triton(step(ssim)))
    # The kernels that compute Sxy themselves (SSIMLAYER_FUSED_CONV): switched once around the
    # timings, since each switch has the layer check its kernels again on first use.
    previous = _triton_eq8.set_fused_conv(True)
    try:
        with torch.no_grad():
            rows["eq8_forward, fused: one launch"] = per_call_us(
                lambda: _triton_eq8.eq8_forward(x, w, 1e-4, 9e-4, geometry, True)
            )
            fused = _triton_eq8.eq8_forward(x.detach(), w, 1e-4, 9e-4, geometry, False)
            rows["eq8_backward, fused, Sxy not kept: 2 launches + convolution_backward"] = (
                per_call_us(
                    lambda: _triton_eq8.eq8_backward(
                        x, w, fused[1], fused[2], None, grad, 1e-4, 9e-4, geometry, (True, True)
                    )
                )
            )
        rows["ssim forward+backward step (Triton, fused)"] = per_call_us(step(ssim))
        # And the convolution's backward inside the backward's last kernel too: no cuDNN.
        previous_backward = _triton_eq8.set_conv_backward(True)
        try:
            with torch.no_grad():
                rows["eq8_backward, no cuDNN, Sxy not kept: 2 launches + zeros"] = per_call_us(
                    lambda: _triton_eq8.eq8_backward(
                        x, w, fused[1], fused[2], None, grad, 1e-4, 9e-4, geometry, (True, True)
                    )
                )
            rows["ssim forward+backward step (Triton, no cuDNN)"] = per_call_us(step(ssim))
        finally:
            _triton_eq8.set_conv_backward(previous_backward)
    except Exception as err:  # not yet run on a GPU: keep the other rows whatever happens here
        rows["fused rows failed"] = f"{type(err).__name__}: {err}"
    finally:
        _triton_eq8.set_fused_conv(previous)
    trivial = trivial_steps(x, grad)
    for name, fn in trivial.items():
        rows[f"step through {name}"] = per_call_us(fn)
    # Backward on the calling thread instead of the autograd engine's CUDA device thread: shows
    # what handing the backward (and, for the SSIM layer, the GIL) to that thread costs.
    with torch.autograd.set_multithreading_enabled(False):
        rows["conv step, backward on the calling thread"] = per_call_us(step(conv))
        rows["ssim step (Triton), backward on the calling thread"] = per_call_us(step(ssim))
        for name, fn in trivial.items():
            rows[f"step through {name}, backward on the calling thread"] = per_call_us(fn)
        # cProfile sees the calling thread only: with the backward there, it sees all of it.
        profile = top_own_time(step(ssim))
    # Microseconds per replay, or the message of a capture that failed.
    gpu_us = {
        name: (ms if isinstance(ms, str) else ms * 1e3)
        for name, ms in (
            ("conv step", try_graphed_step_ms(step(conv))),
            ("ssim step (Triton)", try_graphed_step_ms(step(ssim))),
        )
    }
    torch_profile = torch_profiler_tables(step(ssim))
    width = max(map(len, rows))
    for name, us in rows.items():
        print(f"{name:{width}}  {us:8.1f} us/call" if isinstance(us, float) else f"{name}: {us}")
    for name, us in gpu_us.items():
        shown = us if isinstance(us, str) else f"{us:.1f} us"
        print(f"GPU time per {name} (CUDA graph replay): {shown}")
    print("\n".join(profile[:20]))
    print("\n".join(torch_profile["by_self_cpu"]))
    write(
        args.out,
        {
            "cuda_device": torch.cuda.get_device_name(),
            "shape": "x (128, 64, 8, 8), 64 filters 3x3, padding 1",
            "timing": "host time per call: median over 7 loops of 300 calls, synchronised per loop",
            "us_per_call": rows,
            "gpu_us_per_step_cuda_graph": gpu_us,
            "cprofile_ssim_step_top": profile,
            "cprofile_note": "autograd multithreading off, so the backward's Python is included",
            "torch_profiler_ssim_step": torch_profile,
        },
    )
    # The same path with stub kernels on the GPU: its Python and the autograd engine's device
    # thread, without launches.
    python_only("cuda", args.out.with_name(args.out.stem + "_python_only.json"))


def torch_profiler_tables(fn, calls: int = 50, rows: int = 25) -> dict[str, list[str]]:
    """torch.profiler over ``calls`` calls: every thread's operators (the autograd device thread's
    too) by own host time, and the CUDA kernels by GPU time."""
    from torch.profiler import ProfilerActivity

    fn()
    sync()
    with quiet_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        sync()
    events = prof.key_averages()
    return {
        "calls": [str(calls)],
        "by_self_cpu": events.table(sort_by="self_cpu_time_total", row_limit=rows).splitlines(),
        "by_self_gpu": events.table(sort_by="self_device_time_total", row_limit=rows).splitlines(),
    }


if __name__ == "__main__":
    main()
