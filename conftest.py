"""Test-session defaults shared by every test directory."""

import os

import pytest
import torch

# The tests run the layer's default path (the accelerators of ssimlayer._fusion on): float64 and
# small float32 inputs run eagerly, large float32 ones compiled, as for a user.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Without a GPU, Triton's interpreter runs the CUDA kernels on CPU tensors, so tests/test_triton_kernels.py
# checks them on every machine. It is read when triton is imported, hence here, before any test.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _restore_layer_paths():
    """Tests that switch the compiled or Triton path on or off leave the next test as they found it."""
    from ssimlayer import _fusion

    saved = _fusion.fusion_enabled(), _fusion.triton_enabled()
    yield
    _fusion.set_fusion(saved[0])
    _fusion.set_triton(saved[1])
