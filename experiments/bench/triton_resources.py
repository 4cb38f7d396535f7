"""Registers, spills and occupancy of the Triton kernels at the CUDA benchmark's shapes, no GPU needed.

    python experiments/bench/triton_resources.py [--arch 90] [--k-tile 16 8 4] [--shapes 0 1 2]
        [--out outputs/bench/triton_resources.json]

A kernel that needs many registers per thread leaves the GPU few warps to hide memory latency with,
and one that runs out spills to slow local memory. Both are fixed when Triton compiles, so they can be
read without a GPU: the host code of :mod:`ssimlayer._triton_eq8` runs on CPU tensors at each shape of
``layer.py`` (batch 128, as on CUDA) with its kernel launches captured instead of run; each captured
launch is compiled for the chosen architecture with the arguments it received (integer arguments
equal to 1 become constants, as Triton specialises them; pointers are not given Triton's 16-byte
alignment hints), and ``cuobjdump`` from Triton's bundled CUDA tools reads the resource use from the
binary. Occupancy is what the registers allow on an H100/H200 SM (65,536 registers in units of 256 per
warp, at most 64 warps and 32 blocks), the other limits set aside.

``--k-tile`` compiles the filter-tiled kernels with other tile sizes too (``_K_TILE``, filters handled
at once): smaller tiles hold fewer values per thread. ``--fused-conv`` also compiles the kernels that
compute Sxy themselves (``set_fused_conv``: the forward, and the backward's gradient coefficients
when the forward did not keep Sxy), whose programs hold a tile of Sxy for all their filters;
``--conv-backward`` the backward's last kernel with the convolution's backward inside
(``set_conv_backward``). Which is faster is only known on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter's

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from experiments.bench.layer import SHAPES  # noqa: E402
from ssimlayer import _triton_eq8 as kernels  # noqa: E402

KERNELS = (
    "_forward_kernel",
    "_fused_forward_kernel",
    "_fused_backward_kernel",
    "_filter_stats_kernel",
    "_backward_kernel",
    "_window_terms_kernel",
    "_conv_window_terms_kernel",
)
REGISTERS_PER_SM, MAX_WARPS, MAX_BLOCKS = 65536, 64, 32


class _Capture:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **meta)`` records the call, runs nothing."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        return lambda *args, **meta: self.calls.append((self.name, grid, args, meta))


def captured_launches(shape, batch: int = 128, save_sxy: bool = True) -> list:
    """The kernel launches of one forward and one backward at ``shape`` (a ``layer.py`` row), the
    forward keeping Sxy for the backward or not."""
    _, c_in, c_out, size, k, padding = shape
    x = torch.randn(batch, c_in, size, size)
    w = torch.randn(c_out, c_in, k, k)
    geometry = ((1, 1), (padding, padding), (1, 1), 1)
    calls: list = []
    # Each kernel is launched through its Launcher: give the launcher the stand-in.
    launchers = {
        name: next(
            launch for launch in kernels.LAUNCHERS if launch.kernel is getattr(kernels, name)
        )
        for name in KERNELS
    }
    try:
        for name, launch in launchers.items():
            launch.kernel = _Capture(name, calls)
        out, box, ystat, s_xy = kernels.eq8_forward(x, w, 1e-4, 9e-4, geometry, save_sxy)
        grad = torch.ones_like(out)
        kernels.eq8_backward(x, w, box, ystat, s_xy, grad, 1e-4, 9e-4, geometry, (True, True))
    finally:
        for name, launch in launchers.items():
            launch.kernel = getattr(kernels, name)
    return calls


def compile_launch(name: str, args, meta: dict, arch: int):
    """Compile one captured launch: its pointers, its integers (1 as a constant) and constants."""
    fn = getattr(kernels, name)
    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps")}
    for option in ("num_stages", "maxnreg"):
        if option in meta:
            options[option] = meta.pop(option)
    names = [p.name for p in fn.params]
    values = dict(zip(names, args)) | meta
    signature, constants = {}, {}
    for index, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr or (isinstance(value, int) and value == 1):
            signature[param.name] = "constexpr"
            constants[(index,)] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*fp32" if value.dtype == torch.float32 else "*fp64"
        else:
            signature[param.name] = "i32"
    source = ASTSource(fn, signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options), options


def resource_usage(cubin: bytes) -> dict:
    """``cuobjdump --dump-resource-usage`` of one binary: registers, stack, local, shared bytes."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", handle.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = next(line for line in text.splitlines() if "REG:" in line)
    fields = dict(item.split(":", 1) for item in line.split() if ":" in item)
    return {key.lower(): int(fields[key]) for key in ("REG", "STACK", "LOCAL", "SHARED")}


def occupancy(registers: int, warps: int) -> float:
    """Share of an SM's 64 warp slots that ``registers`` per thread allow (registers only)."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    blocks = min(REGISTERS_PER_SM // (per_warp * warps), MAX_BLOCKS)
    return min(blocks * warps, MAX_WARPS) / MAX_WARPS


def _switched(name: str, fused_conv: bool, conv_backward: bool) -> bool:
    """Whether kernel ``name`` is one that ``fused_conv`` or ``conv_backward`` switches on."""
    return (fused_conv and name.startswith("_fused")) or (
        conv_backward and name == "_conv_window_terms_kernel"
    )


def measure(
    arch: int, k_tiles, shapes=SHAPES, fused_conv: bool = False, conv_backward: bool = False
) -> list[dict]:
    rows = []
    default_k_tile = kernels._K_TILE
    default_fused = kernels.set_fused_conv(fused_conv)
    default_conv_backward = kernels.set_conv_backward(conv_backward)
    try:
        for k_tile in k_tiles:
            kernels.set_filter_tile(k_tile)
            for shape in shapes:
                label = (
                    f"128x{shape[1]}x{shape[3]}x{shape[3]} -> {shape[2]}, k{shape[4]} p{shape[5]}"
                )
                # Fused: Sxy not kept, so that the backward's fused kernel is launched too.
                for name, grid, args, meta in captured_launches(shape, save_sxy=not fused_conv):
                    if "K_TILE" not in meta and k_tile != default_k_tile:
                        continue  # not tiled over filters: the same binary as the default
                    if (fused_conv or conv_backward) and not _switched(
                        name, fused_conv, conv_backward
                    ):
                        continue  # the other kernels do not change
                    compiled, options = compile_launch(name, args, meta, arch)
                    usage = resource_usage(compiled.asm["cubin"])
                    row = {
                        "shape": label,
                        "kernel": name.strip("_"),
                        "programs": grid[0],
                        "k_tile": meta.get("K_TILE"),
                        "constexprs": {k: v for k, v in meta.items() if k != "num_warps"},
                        "num_warps": options["num_warps"],
                        "registers": usage["reg"],
                        "stack_bytes": usage["stack"],
                        "local_bytes": usage["local"],
                        "occupancy": round(occupancy(usage["reg"], options["num_warps"]), 3),
                    }
                    rows.append(row)
                    print(
                        f"{label:30s} {row['kernel']:21s} K_TILE={str(row['k_tile']):4s} "
                        f"warps={row['num_warps']} regs={row['registers']:3d} "
                        f"stack={row['stack_bytes']:3d} occupancy={row['occupancy']:.0%}",
                        flush=True,
                    )
    finally:
        kernels.set_filter_tile(default_k_tile)
        kernels.set_fused_conv(default_fused)
        kernels.set_conv_backward(default_conv_backward)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100)")
    parser.add_argument("--k-tile", type=int, nargs="+", default=[kernels._K_TILE])
    parser.add_argument(
        "--shapes", type=int, nargs="+", default=list(range(len(SHAPES))),
        help="indices into layer.py's SHAPES (default: all)",
    )  # fmt: skip
    parser.add_argument("--fused-conv", action="store_true", help="also the fused forward kernel")
    parser.add_argument(
        "--conv-backward", action="store_true", help="also the kernel with the conv's backward"
    )
    parser.add_argument(
        "--max-registers", type=int, default=0, help="registers per thread at most (maxnreg)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "bench" / "triton_resources.json"
    )
    args = parser.parse_args(argv)
    shapes = [SHAPES[i] for i in args.shapes]
    kernels.set_max_registers(args.max_registers)
    rows = measure(args.arch, args.k_tile, shapes)
    if args.fused_conv:
        rows += measure(args.arch, [kernels._K_TILE], shapes, fused_conv=True)
    if args.conv_backward:
        rows += measure(args.arch, [kernels._K_TILE], shapes, conv_backward=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "target": f"cuda sm_{args.arch}",
        "triton": triton.__version__,
        "torch": torch.__version__,
        "how": "compiled without a GPU from the launches the host code makes at layer.py's shapes",
        "max_registers": args.max_registers,
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
