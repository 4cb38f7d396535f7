"""experiments/bench/k_tile.py: which kernel schedules it times (the timing itself needs CUDA)."""

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
