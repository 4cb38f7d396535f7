"""Where a GPU step's time goes when it is bound by the host: time per call of each piece, CUDA only.

    python experiments/bench/host_overhead.py [--out outputs/bench/host_overhead.json]

At the benchmark's shapes a convolution's forward and backward take well under a millisecond of GPU
time, so what the host spends launching work decides the wall time. Each row issues one operation
many times without synchronising (the GPU work of these shapes is shorter than its launch, so the
loop measures the host) and reports microseconds per call. The shape is the benchmark's smallest
(128, 64->64, 8x8, k3).

It also profiles 300 SSIM steps with cProfile and stores the 30 functions with the most own time,
so that a GPU session shows where the host time of a step goes (Triton's launcher, the autograd
Function, this package's wrapper) without a second run.

    python experiments/bench/host_overhead.py --python-only [--device cpu]

times the Triton path's Python alone, on any device: the Triton kernels are replaced by stubs that
return empty tensors of the right shapes (no launch, no convolution), so what remains is
``ssim_conv2d``'s checks and dispatch, the autograd Function and the engine. This is how changes to
that Python are measured without a GPU.
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
        config = functional._triton_config(x, ssim.weight, ((1, 1), (1, 1), (1, 1), 1))
        for kind in ("forward", "backward"):  # as if the first-use checks had passed
            triton_checks.record(kind, config, True)

        def step():
            x.grad = None
            ssim.zero_grad(set_to_none=True)
            ssim(x).backward(grad)

        with torch.no_grad():
            forward_us = per_call_us(lambda: ssim(x), calls=2000)
        rows = {
            "ssim forward (no grad), stub kernels": forward_us,
            "ssim forward+backward step, stub kernels": per_call_us(step, calls=2000),
        }
        profile = top_own_time(step, calls=2000)
    finally:
        functional.triton_eq8 = real
        triton_checks.reset()
    for name, us in rows.items():
        print(f"{name:42s} {us:8.1f} us/call")
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

    rows = {}
    with torch.no_grad():
        rows["conv forward (no grad)"] = per_call_us(lambda: conv(x))
        rows["ssim forward (no grad, Triton)"] = per_call_us(lambda: ssim(x))
        rows["F.conv2d alone"] = per_call_us(lambda: torch.nn.functional.conv2d(x, w, None, 1, 1))
        rows["eq8_forward: conv + forward kernel"] = per_call_us(
            lambda: _triton_eq8.eq8_forward(x, w, 1e-4, 9e-4, geometry, True)
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
    rows["ssim forward+backward step (torch.compile)"] = per_call_us(without_triton(step(ssim)))
    profile = top_own_time(step(ssim))
    width = max(map(len, rows))
    for name, us in rows.items():
        print(f"{name:{width}}  {us:8.1f} us/call")
    print("\n".join(profile[:20]))
    write(
        args.out,
        {
            "cuda_device": torch.cuda.get_device_name(),
            "shape": "x (128, 64, 8, 8), 64 filters 3x3, padding 1",
            "timing": "host time per call: median over 7 loops of 300 calls, synchronised per loop",
            "us_per_call": rows,
            "cprofile_ssim_step_top": profile,
        },
    )
    # The same path with stub kernels on the GPU: its Python and the autograd engine's device
    # thread, without launches.
    python_only("cuda", args.out.with_name(args.out.stem + "_python_only.json"))


if __name__ == "__main__":
    main()
