"""experiments/bench/step_hooks.py: both ways run, alternating, and the rows say what they saved."""

from __future__ import annotations

import json

import pytest

from experiments.bench import step_hooks as bench


def test_bench_step_hooks_times_both_ways_alike(tmp_path):
    out = tmp_path / "step_hooks.json"
    (row,) = bench.main(
        ["--models", "shallow_ssim", "--k", "4", "--epochs", "3", "--out", str(out)]
        + ["debug=smoke", "data.num_train=32"]
    )
    assert row["groups_timed"] == {"step_hooks": 4, "lightning": 4}  # 16 steps / k per epoch
    assert row["step_hooks_us_per_step"] > 0 and row["lightning_us_per_step"] > 0
    assert row["saved_us_per_step"] == pytest.approx(
        row["lightning_us_per_step"] - row["step_hooks_us_per_step"], abs=0.11
    )
    assert json.loads(out.read_text())["rows"] == [row]


def test_bench_step_hooks_refuses_an_even_epoch_count(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--epochs", "4", "--out", str(tmp_path / "x.json")])
