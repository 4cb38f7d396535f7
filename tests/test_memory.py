"""retain_freed_memory: CPU training steps reuse freed memory instead of faulting in fresh pages."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

from ssimlayer import memory
from ssimlayer.utils import compose_config

# Five forward + backward steps of an SSIM layer, after one warm-up step, in a fresh process (the
# setting is process-wide and lasting); prints the minor page faults per step.
STEPS = """
import resource, sys, torch
from ssimlayer import SSIMConv2d
from ssimlayer import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.manual_seed(0)
x = torch.randn(16, 32, 32, 32, requires_grad=True)
layer = SSIMConv2d(32, 32, 3, padding=1)
def step():
    x.grad = None
    layer.zero_grad(set_to_none=True)
    layer(x).sum().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)"
)


def _faults_per_step(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"  # the default policy
            },
            "SSIMLAYER_FUSE": "0",
            "OMP_NUM_THREADS": "1",
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_retained_memory_spares_the_page_faults_of_every_step():
    # glibc's default policy faults a different amount in each process (its thresholds move with
    # the order of frees): 2,800-22,800 faults per step in 20 processes here, 6,300 or more in 19
    # of them; retained, 200-750 in 10. So the default's median of three processes.
    default = statistics.median(_faults_per_step("default") for _ in range(3))
    retained = _faults_per_step("retain")
    assert default > 2000
    assert retained < default / 4


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.retain_freed_memory() is False


def test_the_training_and_evaluation_configs_retain_by_default():

    from ssimlayer.utils import register_resolvers

    register_resolvers()
    for name in ("train", "eval"):
        assert compose_config(name).retain_freed_memory is True


def test_the_layer_and_the_memory_policy_import_without_the_pipeline():
    """``import ssimlayer`` needs only torch: none of the pipeline's libraries get loaded."""
    code = (
        "import sys, ssimlayer\n"
        "assert callable(ssimlayer.retain_freed_memory) and ssimlayer.SSIMConv2d\n"
        "loaded = [m for m in ('omegaconf', 'hydra', 'pytorch_lightning', 'wandb', 'torchmetrics')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
