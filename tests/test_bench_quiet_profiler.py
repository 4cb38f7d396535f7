"""experiments/bench/quiet_profiler.py: Kineto's chatter dropped, everything else kept."""

from __future__ import annotations

import os

import pytest
import torch
from torch.profiler import ProfilerActivity

from experiments.bench.quiet_profiler import native_stderr_without, quiet_profile


def test_chatter_lines_are_dropped_and_the_others_written_back(capfd):
    with native_stderr_without():
        os.write(2, b"USDT:2026-11-28 04:05:51 1:1 SyncActivityProfilerHandler.cpp:39] start\n")
        os.write(2, b"a warning that matters\n")
        os.write(2, b"ERROR:2026 1:1 DeviceProperties.cpp:56] gpuGetDeviceCount failed with 35\n")
    assert capfd.readouterr().err == "a warning that matters\n"
    os.write(2, b"after the block\n")  # descriptor 2 is the terminal's again
    assert capfd.readouterr().err == "after the block\n"


def test_what_was_written_is_kept_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="boom"), native_stderr_without():
        os.write(2, b"written before the error\n")
        raise RuntimeError("boom")
    assert capfd.readouterr().err == "written before the error\n"


def test_quiet_profile_profiles(capfd):
    with quiet_profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(4).add_(1)
    assert any(event.key == "aten::add_" for event in prof.key_averages())
    assert "USDT:" not in capfd.readouterr().err
