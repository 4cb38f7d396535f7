"""GPU time of the SSIM step with other schedules of the Triton kernels (tiles, blocks), CUDA only.

    python experiments/bench/k_tile.py [--k-tile 16 8 4] [--block 64 32 16] [--stats-once]
        [--split 2 4 8] [--kernels] [--shapes 0 1 2] [--out outputs/bench/k_tile.json]

Each variant changes one knob of :mod:`ssimlayer._triton_eq8` from its default:

- ``--k-tile``: filters handled at once (``set_filter_tile``). ``triton_resources.py`` shows, without
  a GPU, that it sets the kernels' registers per thread (the backward kernel needs over 200 with 16
  filters, leaving 12 % of an SM's warp slots; 128-142 with 8, the default since an H200 measured
  it fastest; 55-72 with 4).
- ``--block``: positions per program (``set_position_block``, default 64). At 8x8 a program covers
  a whole image, so a batch of 128 makes 128 programs of 2 warps for an H200's 132 SMs; smaller
  blocks make more, smaller programs.
- ``--stats-once``: the filter statistics computed once per forward by their own launch instead of
  by every forward program (``set_stats_once``); with ``--block`` also each block with it.
- ``--split``: each block of positions' filters (input channels, in the window-terms kernel)
  shared among at most n programs (``set_split``; default 0, automatic), in each kernel alone and
  in all three. At 8x8 and batch 128 one program per block makes 128 programs for 132 SMs.
- ``--min-warps``: at least n warps per program of every position-blocked kernel
  (``set_min_warps``; by default 2 for a block of 64, so at 8x8 an SM holds one or two programs of
  2 warps).
- ``--max-registers``: at most n registers per thread in every position-blocked kernel
  (``set_max_registers``, Triton's ``maxnreg``): more programs per SM, some values spilled.
- ``--taps-outside``: the forward kernel's patch sums tap by tap, each over the channels
  (``set_taps_outside``): fewer registers, fewer loads in flight per step.
- ``--fused-conv``: the forward's convolution inside the forward kernel (``set_fused_conv``: one
  launch and no Sxy round trip through memory, against cuDNN's convolution), with its default
  schedule and each of ``--fused-warps`` and ``--fused-stages`` (``set_fused_schedule``).
- ``--conv-backward``: the convolution's backward inside the backward's last kernel
  (``set_conv_backward``: no ``convolution_backward``), alone and, with ``--fused-conv``, with
  the fused forward too (no cuDNN at all), and with each of ``--conv-schedules`` (``tile,warps,stages``
  triples for ``set_conv_schedule``).
- ``--kernels``: also each variant's GPU time per kernel (profiler, microseconds per step).
- ``--shapes``: which of ``layer.py``'s shapes, by index (default all three), in that order.

``--summarize FILE ...`` prints written results as Markdown tables, on any machine.

Whether any is faster is a GPU question: at each CUDA shape of ``layer.py`` (batch 128) this replays
the conv and SSIM forward + backward steps from CUDA graphs (GPU time only, no host) for every
variant, and checks that each variant's output and gradients equal the defaults' (float32 rounding
apart). Rows are written as they come.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from experiments.bench.cuda_graph import try_graphed_step_ms  # noqa: E402
from experiments.bench.layer import SHAPES, build, step  # noqa: E402
from experiments.bench.quiet_profiler import quiet_profile  # noqa: E402
from ssimlayer import _fusion, _triton_eq8  # noqa: E402

KNOBS = {
    "k_tile": _triton_eq8.set_filter_tile,
    "block": _triton_eq8.set_position_block,
    "stats_once": _triton_eq8.set_stats_once,
    "forward_split": lambda n: _triton_eq8.set_split(forward=n),
    "backward_split": lambda n: _triton_eq8.set_split(backward=n),
    "window_split": lambda n: _triton_eq8.set_split(window=n),
    "min_warps": _triton_eq8.set_min_warps,
    "max_registers": _triton_eq8.set_max_registers,
    "taps_outside": _triton_eq8.set_taps_outside,
    "fused_conv": _triton_eq8.set_fused_conv,
    "fused_warps": lambda n: _triton_eq8.set_fused_schedule(warps=n)[0],
    "fused_stages": lambda n: _triton_eq8.set_fused_schedule(stages=n)[1],
    "conv_backward": _triton_eq8.set_conv_backward,
    "conv_tile": lambda n: _triton_eq8.set_conv_schedule(tile=n)[0],
    "conv_warps": lambda n: _triton_eq8.set_conv_schedule(warps=n)[1],
    "conv_stages": lambda n: _triton_eq8.set_conv_schedule(stages=n)[2],
}


def defaults() -> dict:
    return {
        "k_tile": _triton_eq8._K_TILE,
        "block": _triton_eq8._BLOCK,
        "stats_once": _triton_eq8._STATS_ONCE,
        "forward_split": _triton_eq8._FORWARD_SPLIT,
        "backward_split": _triton_eq8._BACKWARD_SPLIT,
        "window_split": _triton_eq8._WINDOW_SPLIT,
        "min_warps": _triton_eq8._MIN_WARPS,
        "max_registers": _triton_eq8._MAX_REGISTERS,
        "taps_outside": _triton_eq8._TAPS_OUTSIDE,
        "fused_conv": _triton_eq8._FUSED_CONV,
        "fused_warps": _triton_eq8._FUSED_WARPS,
        "fused_stages": _triton_eq8._FUSED_STAGES,
        "conv_backward": _triton_eq8._CONV_BACKWARD,
        "conv_tile": _triton_eq8._CONV_TILE,
        "conv_warps": _triton_eq8._CONV_WARPS,
        "conv_stages": _triton_eq8._CONV_STAGES,
    }


def use(variant: dict) -> None:
    """Set every knob of ``variant`` for the next launches, first-use checks included."""
    for knob, value in variant.items():
        KNOBS[knob](value)
    _fusion.triton_checks.reset()


def variants(
    k_tiles,
    blocks,
    stats_once: bool,
    splits=(),
    warps=(),
    fused=False,
    fused_schedules=(),
    max_registers=(),
    taps_outside=False,
    conv_backward=False,
    conv_schedules=(),
) -> list[dict]:
    """The defaults, then each requested change of one knob (and each block with stats once, each
    split in each of the three kernels alone and in all three, the fused forward with each
    ``(warps, stages)`` of ``fused_schedules``, the convolution's backward in the kernels with the
    fused forward and with each ``(tile, warps, stages)`` of ``conv_schedules``)."""
    base = defaults()
    found = [base]
    for n in splits:
        found += [
            {**base, "forward_split": n},
            {**base, "backward_split": n},
            {**base, "window_split": n},
            {**base, "forward_split": n, "backward_split": n, "window_split": n},
        ]
    found += [{**base, "k_tile": k} for k in k_tiles]
    found += [{**base, "block": b} for b in blocks]
    found += [{**base, "min_warps": n} for n in warps]
    found += [{**base, "max_registers": n} for n in max_registers]
    if taps_outside:
        found += [{**base, "taps_outside": True}]
    if stats_once:
        found += [{**base, "stats_once": True}]
        found += [{**base, "block": b, "stats_once": True} for b in blocks]
    if fused:
        found += [{**base, "fused_conv": True}]
        found += [
            {**base, "fused_conv": True, "fused_warps": w, "fused_stages": n}
            for w, n in fused_schedules
        ]
    if conv_backward:
        found += [{**base, "conv_backward": True}]
        if fused:
            found += [{**base, "fused_conv": True, "conv_backward": True}]
        found += [
            {**base, "conv_backward": True, "conv_tile": t, "conv_warps": w, "conv_stages": n}
            for t, w, n in conv_schedules
        ]
    unique = {tuple(sorted(v.items())): v for v in found}
    return list(unique.values())


def outputs(shape, device: str) -> list[torch.Tensor]:
    """Output, input gradient and filter gradient of one SSIM step (fixed seed)."""
    _, c_in, c_out, size, k, p = shape
    torch.manual_seed(0)
    layer = build("ssim", c_in, c_out, k, p, device)
    x = torch.randn(shape[0], c_in, size, size, device=device, requires_grad=True)
    out = layer(x)
    out.backward(torch.ones_like(out))
    return [out.detach(), x.grad, layer.weight.grad]


def largest_difference(variant: dict, default: dict, shape, device: str) -> float:
    """Largest difference, relative to the largest magnitude, from the defaults' results."""
    use(default)
    expected = outputs(shape, device)
    use(variant)
    found = outputs(shape, device)
    use(default)
    return max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(found, expected)
    )


def graphed_ms(shape, impl: str) -> float | str:
    _, c_in, c_out, size, k, p = shape
    torch.manual_seed(0)
    module = build(impl, c_in, c_out, k, p, "cuda")
    x = torch.randn(shape[0], c_in, size, size, device="cuda", requires_grad=True)
    grad = torch.randn_like(module(x))
    return try_graphed_step_ms(lambda: step(module, x, grad))


def kernel_us(shape) -> dict[str, float]:
    """GPU time per kernel of one SSIM forward + backward, microseconds, median of 5 profiled steps
    (the kernels' names cut to 60 characters)."""
    _, c_in, c_out, size, k, p = shape
    torch.manual_seed(0)
    module = build("ssim", c_in, c_out, k, p, "cuda")
    x = torch.randn(shape[0], c_in, size, size, device="cuda", requires_grad=True)
    grad = torch.randn_like(module(x))
    for _ in range(3):
        step(module, x, grad)
    per_step: dict[str, list[float]] = {}
    for _ in range(5):
        torch.cuda.synchronize()
        with quiet_profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(module, x, grad)
            torch.cuda.synchronize()
        for event in prof.key_averages():
            if event.self_device_time_total > 0:
                per_step.setdefault(event.key[:60], []).append(event.self_device_time_total)
    return {name: round(statistics.median(us), 2) for name, us in per_step.items()}


def _ours(kernel: str) -> bool:
    """A kernel of :mod:`ssimlayer._triton_eq8` (``_forward_kernel``...), not a mangled C++ name."""
    return kernel.startswith("_") and not kernel.startswith("_Z")


def summary(record: dict) -> str:
    """A written result as a Markdown table, one row per shape and variant: the knobs it changes
    from the defaults, SSIM / conv GPU time, the largest difference from the defaults' results, and
    (where measured) GPU microseconds per step of each of this package's Triton kernels and of
    everything else (cuDNN's kernels, layout conversions) together."""
    default = record["defaults"]
    ours = sorted({name for row in record["rows"] for name in row.get("kernel_us", {})
                   if _ours(name)})  # fmt: skip
    lines = [
        f"{record['device']}, torch {record['torch']}; defaults {default}",
        "",
        "| shape | variant | SSIM / conv | largest difference | "
        + " | ".join(name.strip("_") for name in ours)
        + (" | other kernels |" if ours else ""),
        "|---" * (4 + len(ours) + bool(ours)) + "|",
    ]
    for row in record["rows"]:
        changed = {k: row[k] for k in default if k in row and row[k] != default[k]}
        variant = ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
        ratio = row["ssim_over_conv_graphed"]
        cells = [
            "x".join(map(str, row["shape"])),
            variant,
            "-" if ratio is None else f"{ratio:.3f}",
            f"{row['largest_relative_difference_from_default']:.1e}",
        ]
        if ours:
            us = row.get("kernel_us", {})
            cells += [f"{us[name]:.1f}" if name in us else "-" for name in ours]
            cells.append(f"{sum(v for k, v in us.items() if not _ours(k)):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--summarize", type=Path, nargs="+", help="print written results as tables (no GPU needed)"
    )
    parser.add_argument("--k-tile", type=int, nargs="*", default=[16, 8, 4])
    parser.add_argument("--block", type=int, nargs="*", default=[])
    parser.add_argument("--stats-once", action="store_true")
    parser.add_argument("--split", type=int, nargs="*", default=[])
    parser.add_argument("--min-warps", type=int, nargs="*", default=[])
    parser.add_argument("--max-registers", type=int, nargs="*", default=[])
    parser.add_argument("--taps-outside", action="store_true")
    parser.add_argument("--fused-conv", action="store_true")
    parser.add_argument("--fused-warps", type=int, nargs="*", default=[])
    parser.add_argument("--fused-stages", type=int, nargs="*", default=[])
    parser.add_argument("--conv-backward", action="store_true")
    parser.add_argument(
        "--conv-schedules", nargs="*", default=[], help="tile,warps,stages triples, e.g. 64,8,2"
    )
    parser.add_argument("--kernels", action="store_true", help="GPU time per kernel too")
    parser.add_argument("--shapes", type=int, nargs="*", default=list(range(len(SHAPES))))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "k_tile.json")
    args = parser.parse_args(argv)
    if args.summarize:
        for path in args.summarize:
            print(f"{path}:\n{summary(json.loads(path.read_text()))}\n")
        return 0
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (triton_resources.py reads registers without one)")
    default = defaults()
    schedules = [
        (w, n)
        for w in args.fused_warps or [default["fused_warps"]]
        for n in args.fused_stages or [default["fused_stages"]]
    ]
    conv_schedules = [tuple(int(n) for n in triple.split(",")) for triple in args.conv_schedules]
    record = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "defaults": default,
        "rows": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index in args.shapes:
        shape = (128, *SHAPES[index][1:])
        conv = graphed_ms(shape, "conv")
        for variant in variants(
            args.k_tile,
            args.block,
            args.stats_once,
            args.split,
            args.min_warps,
            args.fused_conv,
            schedules,
            args.max_registers,
            args.taps_outside,
            args.conv_backward,
            conv_schedules,
        ):
            use(variant)
            ssim = graphed_ms(shape, "ssim")
            row = {
                "shape": list(shape),
                **variant,
                "conv_graphed_ms": conv,
                "ssim_graphed_ms": ssim,
                "ssim_over_conv_graphed": (
                    ssim / conv if isinstance(ssim, float) and isinstance(conv, float) else None
                ),
                "largest_relative_difference_from_default": largest_difference(
                    variant, default, shape, "cuda"
                ),
            }
            if args.kernels:
                use(variant)
                row["kernel_us"] = kernel_us(shape)
                use(default)
            record["rows"].append(row)
            args.out.write_text(json.dumps(record, indent=1) + "\n")
            print(json.dumps(row), flush=True)
        use(default)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
