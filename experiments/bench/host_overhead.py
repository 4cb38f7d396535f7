"""Where a GPU step's time goes when it is bound by the host: time per call of each piece, CUDA only.

    python experiments/bench/host_overhead.py [--out outputs/bench/host_overhead.json]

At the benchmark's shapes a convolution's forward and backward take well under a millisecond of GPU
time, so what the host spends launching work decides the wall time. Each row issues one operation
many times without synchronising (the GPU work of these shapes is shorter than its launch, so the
loop measures the host) and reports microseconds per call. The shape is the benchmark's smallest
(128, 64->64, 8x8, k3).
"""

from __future__ import annotations

import argparse
import json
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
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "bench" / "host_overhead.json"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    from ssimlayer import _triton_eq8

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
        rows["eq8_forward: filter-stats + conv + forward kernel"] = per_call_us(
            lambda: _triton_eq8.eq8_forward(x, w, 1e-4, 9e-4, geometry, True)
        )
        rows["one tiny Triton launch (filter stats)"] = per_call_us(
            lambda: _triton_eq8._filter_stats(w)
        )
        rows["eq8_backward: 3 Triton launches + convolution_backward"] = per_call_us(
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
    width = max(map(len, rows))
    for name, us in rows.items():
        print(f"{name:{width}}  {us:8.1f} us/call")
    result = {
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(),
        "shape": "x (128, 64, 8, 8), 64 filters 3x3, padding 1",
        "timing": "host time per call: median over 7 loops of 300 calls, synchronised per loop",
        "us_per_call": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
