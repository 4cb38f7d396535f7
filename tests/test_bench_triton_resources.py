"""experiments/bench/triton_resources.py: the kernels' registers and occupancy, read without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def test_resources_of_every_launch_at_one_shape(tmp_path):
    from ssimlayer._triton_eq8 import _K_TILE as default

    assert default > 4, "the test compares the default filter tile with a smaller one"
    out = tmp_path / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench" / "triton_resources.py"),
         "--shapes", "2", "--k-tile", str(default), "4", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    # Three launches with the default tile; the two filter-tiled kernels again with 4 filters.
    assert [(r["kernel"], r["k_tile"]) for r in rows] == [
        ("forward_kernel", default), ("backward_kernel", default), ("window_terms_kernel", None),
        ("forward_kernel", 4), ("backward_kernel", 4),
    ]  # fmt: skip
    for row in rows:
        assert 0 < row["registers"] <= 255 and 0 < row["occupancy"] <= 1
        assert row["shape"].startswith("128x64x8x8") and row["programs"] > 0
    # Fewer filters at once hold fewer values per thread: the backward kernel needs fewer registers.
    backward = {r["k_tile"]: r["registers"] for r in rows if r["kernel"] == "backward_kernel"}
    assert backward[4] < backward[default]
