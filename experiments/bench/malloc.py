"""CPU step times under glibc's default malloc policy and with ``retain_freed_memory``.

    python experiments/bench/malloc.py [--rounds 2] [--repeats 41] [--out outputs/bench/malloc.json]

The policy is process-wide and lasting, so every measurement runs in a fresh process; the two
policies alternate, case by case, round by round. Cases:

- ``layer``: forward + backward of ``nn.Conv2d`` and ``SSIMConv2d`` alternated, at the CPU shapes of
  ``layer.py`` (batch 32), built and stepped as there;
- ``model``: a bare training loop (SGD, cross-entropy, no Lightning, no data loader) of a paper
  model on one fixed CIFAR-size batch, at batch 32 and 128.

Each row gives the median and fastest step time and the minor page faults per step (the kernel's
work of faulting in and zeroing fresh memory, which is what the policy changes).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from experiments.bench import layer  # noqa: E402
from ssimlayer import retain_freed_memory  # noqa: E402

MODELS = [("fig4_ssim", 32), ("fig4_plain", 32), ("fig4_ssim", 128), ("fig4_plain", 128)]
POLICIES = ("default", "retain")


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(steps: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Each step function ``repeats`` times, alternated, after 3 warm-up calls each."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    counts = dict.fromkeys(steps, 0)
    for _ in range(repeats):
        for name, step in steps.items():
            before, start = faults(), time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
            counts[name] += faults() - before
    return {
        name: {
            "ms_median": 1e3 * statistics.median(ts),
            "ms_min": 1e3 * min(ts),
            "page_faults_per_step": counts[name] / repeats,
        }
        for name, ts in times.items()
    }


def layer_rows(repeats: int) -> list[dict]:
    rows = []
    for b, c_in, c_out, size, k, p in layer.SHAPES:
        torch.manual_seed(0)
        x = torch.randn(b, c_in, size, size, requires_grad=True)
        modules = {impl: layer.build(impl, c_in, c_out, k, p, "cpu") for impl in ("conv", "ssim")}
        grad = torch.randn_like(modules["conv"](x)).detach()
        steps = {
            impl: functools.partial(layer.step, module, x, grad) for impl, module in modules.items()
        }
        result = timed(steps, repeats)
        rows.append(
            {
                "case": f"layer {b}, {c_in}->{c_out}, {size}x{size}, k{k}",
                **{f"{name}_{key}": v for name, r in result.items() for key, v in r.items()},
                "ssim_over_conv_median": result["ssim"]["ms_median"] / result["conv"]["ms_median"],
            }
        )
    return rows


def model_row(model: str, batch: int, repeats: int) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ssimlayer.utils import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}"])
    net = instantiate(cfg.model).net
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    torch.manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return {"case": f"model {model} batch {batch}", **timed({"step": step}, repeats)["step"]}


def child(case: str, policy: str, repeats: int) -> None:
    retained = policy == "retain" and retain_freed_memory()
    if policy == "retain" and not retained:
        sys.exit("retain_freed_memory did not take here (not glibc's malloc)")
    if case == "layer":
        rows = layer_rows(repeats)
    else:
        model, batch = case.split(":")
        rows = [model_row(model, int(batch), repeats)]
    for row in rows:
        print(json.dumps({"policy": policy, **row}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "malloc.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--policy", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.policy, args.repeats)
        return
    cases = ["layer", *(f"{m}:{b}" for m, b in MODELS)]
    rows = []
    for round_ in range(args.rounds):
        for case in cases:
            for policy in POLICIES:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", case, "--policy", policy]
                    + ["--repeats", str(args.repeats)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                for line in done.stdout.splitlines():
                    if line.startswith("{"):
                        rows.append({"round": round_, **json.loads(line)})
                        print(line, flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(
                    json.dumps(
                        {
                            "torch": torch.__version__,
                            "cpu_threads": torch.get_num_threads(),
                            "repeats": args.repeats,
                            "rows": rows,
                        },
                        indent=2,
                    )
                )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
