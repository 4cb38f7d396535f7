"""experiments/bench/k_tile.py: which kernel schedules it times (the timing itself needs CUDA)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.bench import k_tile  # noqa: E402


def test_variants_change_one_knob_from_the_defaults_and_restore_them():
    base = k_tile.defaults()
    found = k_tile.variants([base["k_tile"], 4], [32, 16], stats_once=True, warps=[4])
    assert found[0] == base
    changed = [{knob for knob in base if variant[knob] != base[knob]} for variant in found[1:]]
    assert (
        changed
        == [{"k_tile"}, {"block"}, {"block"}, {"min_warps"}, {"stats_once"}]
        + [{"block", "stats_once"}] * 2
    )
    k_tile.use(found[-1])
    assert k_tile.defaults() == found[-1]
    k_tile.use(base)
    assert k_tile.defaults() == base


def test_each_split_is_timed_in_each_kernel_and_in_all_three():
    base = k_tile.defaults()
    found = k_tile.variants([], [], stats_once=False, splits=[2, 8])
    changed = [{knob for knob in base if variant[knob] != base[knob]} for variant in found[1:]]
    splits = {"forward_split", "backward_split", "window_split"}
    assert changed == [{"forward_split"}, {"backward_split"}, {"window_split"}, splits] * 2
    assert [v["forward_split"] for v in found[1:5]] == [2, base["forward_split"], 0, 2]
    k_tile.use(found[-1])
    assert {k_tile.defaults()[knob] for knob in splits} == {8}
    k_tile.use(base)
    assert k_tile.defaults() == base


def test_the_fused_forward_is_timed_with_each_schedule():
    base = k_tile.defaults()
    assert base["fused_conv"] is False
    found = k_tile.variants([], [], stats_once=False, fused=True, fused_schedules=[(4, 1), (8, 2)])
    fused = {"fused_conv": True}
    assert found[1:] == [
        {**base, **fused},
        {**base, **fused, "fused_warps": 4, "fused_stages": 1},
        {**base, **fused, "fused_warps": 8, "fused_stages": 2},
    ]
    k_tile.use(found[-1])
    assert k_tile.defaults() == found[-1]
    k_tile.use(base)
    assert k_tile.defaults() == base


def test_each_register_cap_and_the_taps_outside_are_timed_alone():
    base = k_tile.defaults()
    assert base["max_registers"] == 0
    found = k_tile.variants([], [], stats_once=False, max_registers=[128, 96], taps_outside=True)
    assert found[1:] == [
        {**base, "max_registers": 128},
        {**base, "max_registers": 96},
        {**base, "taps_outside": True},
    ]
    k_tile.use(found[-2])
    assert k_tile.defaults()["max_registers"] == 96
    k_tile.use(base)
    assert k_tile.defaults() == base


def test_a_written_result_reads_as_a_table(tmp_path, capsys):
    """The lease's JSON as Markdown: one row per shape and variant, the changed knobs named, our
    kernels in their own columns and the rest summed."""
    base = k_tile.defaults()
    rows = [
        {"shape": [128, 64, 64, 8, 3, 1], **base, "ssim_over_conv_graphed": 1.56,
         "largest_relative_difference_from_default": 0.0,
         "kernel_us": {"_forward_kernel": 20.3, "_ZN7cutlass6KernelI": 10.0, "nchwToNhwc": 2.5}},
        {"shape": [128, 64, 64, 8, 3, 1], **base, "fused_conv": True,
         "ssim_over_conv_graphed": None, "largest_relative_difference_from_default": 2e-7,
         "kernel_us": {"_fused_forward_kernel": 15.0}},
    ]  # fmt: skip
    path = tmp_path / "k_tile.json"
    path.write_text(json.dumps({"device": "H200", "torch": "2.11", "defaults": base, "rows": rows}))
    assert k_tile.main(["--summarize", str(path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert (
        table[3]
        == "| shape | variant | SSIM / conv | largest difference | forward_kernel | fused_forward_kernel | other kernels |"
    )
    assert table[5] == "| 128x64x64x8x3x1 | defaults | 1.560 | 0.0e+00 | 20.3 | - | 12.5 |"
    assert table[6] == "| 128x64x64x8x3x1 | fused_conv=True | - | 2.0e-07 | - | 15.0 | 0.0 |"


def test_the_convolution_backward_is_timed_alone_and_without_any_cudnn():
    base = k_tile.defaults()
    assert base["conv_backward"] is False
    found = k_tile.variants(
        [], [], stats_once=False, fused=True, conv_backward=True, conv_schedules=[(64, 8, 1)]
    )
    conv = {"conv_backward": True}
    assert found[1:] == [
        {**base, "fused_conv": True},
        {**base, **conv},
        {**base, "fused_conv": True, **conv},
        {**base, **conv, "conv_tile": 64, "conv_warps": 8, "conv_stages": 1},
    ]
    k_tile.use(found[-1])
    assert k_tile.defaults() == found[-1]
    k_tile.use(base)
    assert k_tile.defaults() == base
