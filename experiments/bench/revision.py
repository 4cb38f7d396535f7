"""The layer's CPU step now against ``ssimlayer/functional.py`` at an earlier git revision.

    python experiments/bench/revision.py --rev HEAD~1 [--rounds 31] [--out outputs/bench/revision.json]

Both versions run in one process, alternated with ``nn.Conv2d`` step by step (forward + backward,
the input and the filters both needing gradients), at the CPU shapes of ``layer.py``; the rows give
each version's median step time, its ratio to the convolution's and the largest relative difference
of the two versions' gradients. The earlier ``functional.py`` is loaded as a module of its own; it
must work with the current rest of the package (it shares ``ssimlayer._fusion``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from experiments.bench.layer import SHAPES  # noqa: E402
from ssimlayer import functional, retain_freed_memory  # noqa: E402

SOURCE = "src/ssimlayer/functional.py"


def functional_at(rev: str):
    """``functional.py`` as it was at ``rev``, imported under a name of its own."""
    try:
        text = subprocess.run(
            ["git", "show", f"{rev}:{SOURCE}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except subprocess.CalledProcessError as err:
        message = f"revision.py: cannot read {SOURCE} at {rev!r}: {err.stderr.strip()}"
        raise SystemExit(message) from None
    path = Path(tempfile.mkdtemp()) / "functional_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("functional_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(shape, versions: dict, rounds: int) -> dict:
    b, c_in, c_out, size, k, p = shape
    torch.manual_seed(0)
    x = torch.randn(b, c_in, size, size, requires_grad=True)
    w = torch.randn(c_out, c_in, k, k, requires_grad=True)
    conv = torch.nn.Conv2d(c_in, c_out, k, padding=p, bias=False)
    grad = torch.randn(b, c_out, size, size)

    def ssim_step(module):
        def run():
            x.grad = w.grad = None
            module.ssim_conv2d(x, w, padding=p).backward(grad)
            return x.grad, w.grad

        return run

    def conv_step():
        x.grad = conv.weight.grad = None
        conv(x).backward(grad)

    steps = {name: ssim_step(module) for name, module in versions.items()} | {"conv": conv_step}
    grads = {name: [g.clone() for g in steps[name]()] for name in versions}
    ga, gb = grads.values()
    rel_diff = max(float((u - v).abs().max() / v.abs().max()) for u, v in zip(ga, gb))
    for run in steps.values():
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, run in steps.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {
        "shape": f"{b}, {c_in}->{c_out}, {size}x{size}, k{k}",
        "ms": ms,
        "over_conv": {name: ms[name] / ms["conv"] for name in versions},
        "grad_rel_diff": rel_diff,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision to compare with, e.g. HEAD~1")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs/bench/revision.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    versions = {args.rev: functional_at(args.rev), "now": functional}
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for shape in SHAPES:
        row = compare(shape, versions, args.rounds)
        rows.append(row)
        ratios = ", ".join(f"{n} / conv {r:.3f}" for n, r in row["over_conv"].items())
        print(f"{row['shape']:28s} {ratios}, gradients differ by {row['grad_rel_diff']:.1e}")
        meta = {"rev": args.rev, "rounds": args.rounds, "threads": torch.get_num_threads()}
        args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1))  # after every row
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
