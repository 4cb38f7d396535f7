"""experiments/bench/revision.py: an earlier functional.py against the current one, on a tiny shape."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from experiments.bench import revision

ROOT = Path(__file__).resolve().parents[1]


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    probe = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True)
    return probe.returncode == 0


needs_git = pytest.mark.skipif(not _in_git_checkout(), reason="needs a git checkout")


@needs_git
def test_compares_head_with_the_working_tree(monkeypatch, tmp_path):
    monkeypatch.setattr(revision, "SHAPES", [(2, 3, 4, 6, 3, 1)])
    out = tmp_path / "revision.json"
    revision.main(["--rev", "HEAD", "--rounds", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["rev"] == "HEAD" and result["rounds"] == 2
    (row,) = result["rows"]
    assert set(row["ms"]) == {"HEAD", "now", "conv"}
    assert all(ratio > 0 for ratio in row["over_conv"].values())
    # HEAD's module really is a separate copy, and it computes the same gradients.
    assert revision.functional_at("HEAD") is not revision.functional
    assert row["grad_rel_diff"] < 1e-5


@needs_git
def test_unknown_revision_is_a_clear_error():
    with pytest.raises(
        SystemExit, match="cannot read src/ssimlayer/functional.py at 'no-such-rev'"
    ):
        revision.functional_at("no-such-rev")
