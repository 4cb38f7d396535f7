"""A pack of k runs against the same k runs one after another: training steps of the paper's nets.

    python experiments/bench/pack.py [--model fig4_ssim] [--k 3] [--steps 20] [--device cpu|cuda]

Same batch size (32 per member), same number of steps; times the forward, loss, backward and SGD
step of one packed network (``PackedConvNet``) against k separate networks stepped in turn, eager
(no CUDA graphs, no Lightning). Prints and writes ``outputs/bench/pack_<model>_k<k>_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from ssimlayer.models.packed import PackedConvNet
from ssimlayer.utils import PROJECT_ROOT, compose_config


def _nets(model: str, k: int, device: str) -> list[torch.nn.Module]:
    cfg = compose_config("train", overrides=[f"model={model}", "data=synthetic"])
    return [instantiate(cfg.model.net).to(device) for _ in range(k)]


def _time(step, steps: int, device: str) -> float:
    for _ in range(3):  # warm-up
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="fig4_ssim")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    k, b, dev = args.k, args.batch, args.device
    nets = _nets(args.model, k, dev)
    opts = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4) for n in nets]
    packed = PackedConvNet(nets)
    popt = torch.optim.SGD(packed.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.rand(b, 3 * k, 32, 32, device=dev), torch.randint(0, 10, (b, k), device=dev)

    def one_by_one() -> None:
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            F.cross_entropy(net(x[:, 3 * i : 3 * i + 3]), y[:, i]).backward()
            opt.step()

    def pack() -> None:
        popt.zero_grad()
        logits = packed(x)  # (B, k, 10)
        F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(b, k).mean(
            0
        ).sum().backward()
        popt.step()

    t_seq, t_pack = _time(one_by_one, args.steps, dev), _time(pack, args.steps, dev)
    result = {
        "model": args.model,
        "k": k,
        "batch_per_member": b,
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "sequential_s_per_step_of_all_k": round(t_seq, 5),
        "pack_s_per_step": round(t_pack, 5),
        "speed_up": round(t_seq / t_pack, 3),
    }
    print(json.dumps(result, indent=2))
    out = PROJECT_ROOT / "outputs" / "bench" / f"pack_{args.model}_k{k}_{dev}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
