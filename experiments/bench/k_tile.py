"""GPU time of the SSIM step with other filter tiles in the Triton kernels (``K_TILE``), CUDA only.

    python experiments/bench/k_tile.py [--k-tile 16 8 4] [--out outputs/bench/k_tile.json]

``triton_resources.py`` shows, without a GPU, that the filter tile sets the kernels' registers per
thread (the backward kernel needs over 200 with 16 filters, leaving 12 % of an SM's warp slots;
128-142 with 8, the default since an H200 measured it fastest; 55-72 with 4). Whether more warps or
more values per thread win is a GPU question: at each CUDA shape of ``layer.py`` (batch 128) this
replays the conv and SSIM forward + backward steps from CUDA graphs (GPU time only, no host) for
every tile size, and checks that each tile's output and gradients equal the default tile's (float32
rounding apart). Rows are written as they come.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from experiments.bench.cuda_graph import try_graphed_step_ms  # noqa: E402
from experiments.bench.layer import SHAPES, build, step  # noqa: E402
from ssimlayer import _fusion, _triton_eq8  # noqa: E402


def use_k_tile(k_tile: int) -> None:
    """Make the Triton kernels tile ``k_tile`` filters at once, first-use checks included."""
    _triton_eq8.set_filter_tile(k_tile)
    _fusion.triton_checks.reset()


def outputs(shape, device: str) -> list[torch.Tensor]:
    """Output, input gradient and filter gradient of one SSIM step (fixed seed)."""
    _, c_in, c_out, size, k, p = shape
    torch.manual_seed(0)
    layer = build("ssim", c_in, c_out, k, p, device)
    x = torch.randn(shape[0], c_in, size, size, device=device, requires_grad=True)
    out = layer(x)
    out.backward(torch.ones_like(out))
    return [out.detach(), x.grad, layer.weight.grad]


def largest_difference(k_tile: int, default: int, shape, device: str) -> float:
    """Largest difference, relative to the largest magnitude, from the default tile's results."""
    use_k_tile(default)
    expected = outputs(shape, device)
    use_k_tile(k_tile)
    found = outputs(shape, device)
    use_k_tile(default)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k-tile", type=int, nargs="+", default=[16, 8, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "k_tile.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (triton_resources.py reads registers without one)")
    default = _triton_eq8._K_TILE
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for shape in SHAPES:
        shape = (128, *shape[1:])
        conv = graphed_ms(shape, "conv")
        for k_tile in args.k_tile:
            use_k_tile(k_tile)
            ssim = graphed_ms(shape, "ssim")
            row = {
                "shape": list(shape),
                "k_tile": k_tile,
                "conv_graphed_ms": conv,
                "ssim_graphed_ms": ssim,
                "ssim_over_conv_graphed": (
                    ssim / conv if isinstance(ssim, float) and isinstance(conv, float) else None
                ),
                "largest_relative_difference_from_default": largest_difference(
                    k_tile, default, shape, "cuda"
                ),
            }
            record["rows"].append(row)
            args.out.write_text(json.dumps(record, indent=1) + "\n")
            print(json.dumps(row), flush=True)
        use_k_tile(default)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
