"""experiments/bench/layer.py: the timing helper, on a tiny CPU shape."""

from __future__ import annotations

from experiments.bench import layer as bench


def test_time_shape_returns_seconds_per_step_for_single_and_back_to_back_steps(monkeypatch):
    calls = []
    real_step = bench.step

    def counting_step(module, x, grad):
        calls.append(type(module).__name__)
        real_step(module, x, grad)

    monkeypatch.setattr(bench, "step", counting_step)
    shape = (2, 3, 4, 6, 3, 1)  # batch, c_in, c_out, size, kernel, padding
    single = bench.time_shape(shape, "cpu", repeats=3, impls=["conv", "ssim"])
    warmup = 3 * 2  # three warm-up steps per implementation
    assert len(calls) == warmup + 3 * 2
    calls.clear()
    per_step = bench.time_shape(shape, "cpu", repeats=3, impls=["conv", "ssim"], steps=5)
    assert len(calls) == warmup + 3 * 2 * 5
    # Alternated: each repeat runs conv's steps, then the SSIM layer's.
    assert calls[warmup : warmup + 10] == ["Conv2d"] * 5 + ["SSIMConv2d"] * 5
    for times in (single, per_step):
        assert set(times) == {"conv", "ssim"}
        assert all(len(ts) == 3 and all(0 < t < 10 for t in ts) for ts in times.values())
    assert bench.medians({"conv": [3.0, 1.0, 2.0]}) == {"conv": 2.0}


def test_a_cuda_row_prints_every_ratio(capsys):
    """The CUDA rows' extra columns, the backward on the calling thread included (a row is
    printed from the dict written to layer.json, on a GPU only)."""
    row = {
        "device": "cuda", "batch": 128, "c_in": 64, "c_out": 64, "size": 8, "kernel": 3,
        "conv_ms": 0.4, "ssim_ms": 0.7, "ssim_over_conv": 1.75, "ssim_over_conv_fastest": 1.7,
        "time_target": 1.5, "ssim_eager_over_conv": 3.0, "unfold_over_conv": 9.0,
        "ssim_peak_over_conv": 1.3, "ssim_over_conv_kernel_time": 1.6,
        "ssim_inductor_over_conv": 2.7, "ssim_over_conv_back_to_back": 2.4,
        "ssim_over_conv_graphed": None, "ssim_over_conv_calling_thread": 1.45,
    }  # fmt: skip
    bench.print_row(row)
    line = capsys.readouterr().out
    assert "back-to-back ssim/conv 2.40" in line
    assert "CUDA-graph ssim/conv -" in line
    assert "calling-thread backward ssim/conv 1.45" in line
