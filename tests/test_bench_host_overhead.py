"""experiments/bench/host_overhead.py --python-only: the layer's own Python, timed without a GPU."""

from __future__ import annotations

import json
import math

from experiments.bench import host_overhead as bench
from ssimlayer import _fusion, functional


def test_python_only_times_the_layer_against_a_bare_function_and_restores_the_kernels(tmp_path):
    real = functional.triton_eq8
    out = tmp_path / "host.json"
    bench.main(["--python-only", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["us_per_call"]
    timed = [name for name in rows if name != "ssim step over bare Function step"]
    assert len(timed) == 4 and all(0 < rows[name] < 1e5 for name in timed)
    difference = (
        rows["ssim forward+backward step, stub kernels"]
        - rows["bare autograd Function step, same stubs"]
    )
    assert math.isclose(rows["ssim step over bare Function step"], difference)
    assert any("ssim_conv2d" in line for line in result["cprofile_step_top"])
    # The stubs and the pretended first-use verdicts are gone again.
    assert functional.triton_eq8 is real
    assert not _fusion.triton_checks._done


def test_the_trivial_steps_pass_the_gradient_on_through_a_python_and_a_cpp_node():
    import torch

    x = torch.randn(3, 4, requires_grad=True)
    grad = torch.randn(3, 4)
    for name, step in bench.trivial_steps(x, grad).items():
        step()
        torch.testing.assert_close(x.grad, grad, msg=name)
    # The first node's backward is Python (an autograd Function), the second's C++.
    assert type(bench._PassOn.apply(x).grad_fn).__name__ == "_PassOnBackward"
    assert type(x.view_as(x).grad_fn).__name__ == "ViewBackward0"
