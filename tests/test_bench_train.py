"""make bench-train: a tiny run writes the rows the README and the lead read."""

from __future__ import annotations

import json

from experiments.bench import train as bench


def test_bench_train_smoke_writes_rows(tmp_path):
    out = tmp_path / "train.json"
    bench.main(
        [
            "debug=smoke",
            "model.net.widths=[4,4,8]",
            "data.num_train=64",
            "--models",
            "fig4_plain",
            "--batch-sizes",
            "16",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert {
        "model",
        "batch_size",
        "device",
        "lightning_epoch_s",
        "bare_epoch_s",
        "lightning_over_bare",
        "steps_timed",
        "data_loader",
        "overhead_ms_per_step",
        "lightning_callbacks",
        "lightning_differs",
    } <= set(row)
    assert row["model"] == "fig4_plain" and row["batch_size"] == 16 and row["steps_timed"] == 3
    assert row["lightning_epoch_s"] > 0 and row["bare_epoch_s"] > 0
    # the Lightning side runs the pipeline's own callbacks, not a stripped trainer
    assert {
        "ThrottledProgressBar",
        "ResumeCheckpoint",
        "NonFiniteLossGuard",
        "RunSummary",
        "ModelCheckpoint",
    } <= set(row["lightning_callbacks"])
    assert "FGSMSweep" not in row["lightning_callbacks"] and "FGSM" in row["lightning_differs"]
    assert row["lightning_profiler"] == "NullProfiler"  # conf/trainer's, as in a real run


def test_bench_train_overhead_mode_shrinks_the_model(tmp_path):
    overrides = bench.overhead_overrides(["debug=smoke"], "shallow_ssim")
    assert "model.net.widths=[1,1]" in overrides and "data.image_size=8" in overrides
    out = tmp_path / "train.json"
    (row,) = bench.main(
        ["debug=smoke", "--overhead", "--models", "shallow_ssim", "--steps", "3", "--warmup", "1"]
        + ["--out", str(out)]
    )
    assert row["overhead_mode"] and row["batch_size"] == 2
    assert row["lightning_step_ms"] > 0 and row["bare_step_ms"] > 0


def test_bench_train_alternates_steps_per_execution_values(tmp_path):
    rows = bench.main(
        ["debug=smoke", "--overhead", "--models", "fig4_plain", "--steps", "4", "--warmup", "2"]
        + ["--steps-per-execution", "1,2", "--out", str(tmp_path / "train.json")]
    )
    assert [r["steps_per_execution"] for r in rows] == [1, 2]
    assert rows[0]["bare_step_ms"] == rows[1]["bare_step_ms"]  # one bare loop for both
    assert all(r["lightning_step_ms"] > 0 for r in rows)
