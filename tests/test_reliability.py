"""Reliability of the training entry point: kill and resume, determinism, clear errors, NaN stops.

Runs are tiny (synthetic data, 4-filter layers) and land in ``tmp_path``. Most entry-point tests
call ``ssimlayer.train.main`` in this process with a patched ``sys.argv`` (the real Hydra CLI path:
config composition, the error handler, ``sys.exit``), because a fresh Python with Lightning
imported costs 10-20 s on a shared 2-core machine; one subprocess test checks the real exit code
and stderr, and the kill test needs a process to kill.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.core.global_hydra import GlobalHydra

from ssimlayer import ssim_conv2d
from ssimlayer.data import SyntheticDataModule
from ssimlayer.data.cifar10_files import read_cifar_binary, read_cifar_pickle
from ssimlayer.lightning.safety import NonFiniteLossError
from ssimlayer.train import main, train
from ssimlayer.utils import compose_config

REPO = Path(__file__).resolve().parents[1]

#: metrics.json fields that measure the machine, not the training: left out of "same run" checks.
#: Everything else (accuracies, epochs, steps, model, seed, parameter count) must be identical.
VOLATILE_KEYS = ("wall_time_s",)

#: A run small enough for seconds on a CPU: 8 steps per epoch, 2 epochs, SSIM first layer.
TINY = [
    "model=shallow_ssim",
    "model.net.widths=[4,4]",
    "data=synthetic",
    "trainer=cpu",
    "data.num_train=64",
    "data.num_val=32",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "~callbacks.filters",
    "callbacks.fgsm_sweep.eps=[0.0,0.01]",
    "callbacks.fgsm_sweep.max_batches=1",
    "callbacks.fgsm_sweep.progress=false",
    "callbacks.last_checkpoint.every_n_train_steps=3",
    "callbacks.last_checkpoint.every_n_seconds=null",  # which steps save must not depend on time
]


def compose_cfg(output_dir: Path, *overrides: str):
    return compose_config(
        config_name="train",
        overrides=[
            f"paths.output_dir={output_dir}",
            f"paths.output_root={output_dir.parent}",
            *overrides,
        ],
    )


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in VOLATILE_KEYS}


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run_cli(monkeypatch, capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    """``python -m ssimlayer.train <args>`` in this process; returns (exit code, stderr)."""
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "ssimlayer.train",
            f"paths.output_root={tmp_path}",
            "hydra.job_logging.root.level=WARNING",
            *args,
        ],
    )
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """A finished earlier run under the same output root, which no failing run may touch."""
    run = tmp_path / "default" / "runs" / "2000-01-01_00-00-00_shallow_ssim_seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"finished": true, "best_val_top1": 0.5}\n')
    (run / "checkpoints" / "last.ckpt").write_bytes(b"earlier")
    return run


def assert_untouched(run: Path) -> None:
    assert (run / "metrics.json").read_text() == '{"finished": true, "best_val_top1": 0.5}\n'
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"earlier"


# --- kill and resume --------------------------------------------------------------------------


class KillAtStep(pl.Callback):
    """SIGKILLs its own process in the middle of optimiser step ``step`` (no cleanup runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    # Killed during step 13 (epoch 1, batch 5 of 8); last.ckpt is from step 12, mid-epoch 1.
    killed = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "ssimlayer.train",
        *TINY,
        f"hydra.run.dir={killed}",
        f"paths.output_root={tmp_path}",
        "+callbacks.kill._target_=tests.test_reliability.KillAtStep",
        "+callbacks.kill.step=13",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpt = killed / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert (state["global_step"], state["epoch"]) == (12, 1)  # mid-epoch, 4 of 8 batches done
    assert json.loads((killed / "metrics.json").read_text())["finished"] is False

    resumed = train(compose_cfg(tmp_path / "resumed", *TINY, f"ckpt_path={ckpt}"))
    reference = train(compose_cfg(tmp_path / "reference", *TINY))

    assert reference["epochs"] == 2 and reference["global_step"] == 16
    assert stable(resumed) == stable(reference)
    for name in ("epochs.csv", "fgsm_sweep.csv"):  # per-epoch losses and accuracies, FGSM rows
        assert rows(tmp_path / "resumed" / name) == rows(tmp_path / "reference" / name), name
    assert (tmp_path / "resumed" / "resumed_from.txt").read_text().strip() == str(ckpt)


class CrashAtStep(pl.Callback):
    """Raises in the middle of optimiser step ``step``, as a crash would (no checkpoint after it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_crash_mid_epoch_then_resume_with_the_device_resident_loader(tmp_path, steps_per_execution):
    # The same check as the SIGKILL test, in this process, with data.device_resident=true: the
    # DeviceLoader's position is in the checkpoint, so the resumed run sees the same batches.
    # With groups of 4 steps (0-3, 4-7 | 8-11, 12-15) the crash falls mid-group, and last.ckpt is
    # still the one after step 12 (every_n_train_steps=3 saves at the first group end past each
    # multiple of 3).
    resident = (
        *TINY,
        "data.device_resident=true",
        "~callbacks.fgsm_sweep",
        f"model.steps_per_execution={steps_per_execution}",
    )
    crashed = tmp_path / "crashed"
    cfg = compose_cfg(
        crashed,
        *resident,
        "+callbacks.crash._target_=tests.test_reliability.CrashAtStep",
        "+callbacks.crash.step=13",
    )
    with pytest.raises(RuntimeError, match="crash at step 13"):
        train(cfg)
    ckpt = crashed / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert (state["global_step"], state["epoch"]) == (12, 1)  # mid-epoch, 4 of 8 batches done

    resumed = train(compose_cfg(tmp_path / "resumed", *resident, f"ckpt_path={ckpt}"))
    reference = train(compose_cfg(tmp_path / "reference", *resident))
    assert reference["global_step"] == 16 and stable(resumed) == stable(reference)
    assert rows(tmp_path / "resumed" / "epochs.csv") == rows(tmp_path / "reference" / "epochs.csv")


def test_resume_auto_finds_the_newest_unfinished_run(tmp_path, monkeypatch, capsys):
    # A run stopped after epoch 1 of 2; resume=auto picks it up in a new run dir.
    code, err = run_cli(
        monkeypatch, capsys, tmp_path, *TINY, "trainer.max_epochs=1", "~callbacks.fgsm_sweep"
    )
    assert code == 0, err
    (first,) = (tmp_path / "default" / "runs").iterdir()
    summary = json.loads((first / "metrics.json").read_text())
    summary["finished"] = False  # as if it had been killed after its epoch-end checkpoint
    (first / "metrics.json").write_text(json.dumps(summary))
    code, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        *TINY,
        "trainer.max_epochs=2",
        "~callbacks.fgsm_sweep",
        "resume=auto",
        f"hydra.run.dir={tmp_path / 'default' / 'runs' / 'zz_resumed_shallow_ssim_seed0'}",
    )
    assert code == 0, err
    second = tmp_path / "default" / "runs" / "zz_resumed_shallow_ssim_seed0"
    resumed_from = (second / "resumed_from.txt").read_text().strip()
    assert resumed_from == str(first / "checkpoints" / "last.ckpt")
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["global_step"] == 16 and metrics["finished"]
    assert [r["epoch"] for r in rows(second / "epochs.csv")] == ["1", "2"]


def test_resumable_loader_continues_the_interrupted_epoch_exactly():
    dm = SyntheticDataModule(num_train=40, num_val=8, batch_size=8)
    dm.setup()
    torch.manual_seed(3)
    a = dm.train_dataloader()
    a.sampler.set_epoch(2)
    it = iter(a)
    seen = [next(it) for _ in range(2)]
    state = a.state_dict()
    rest = list(it)
    torch.manual_seed(3)
    b = dm.train_dataloader()
    b.load_state_dict(state)
    again = list(b)  # the same 3 remaining batches, flips included
    assert state == {"epoch": 2, "batches_consumed": 2} and len(seen) + len(again) == 5
    pairs = zip(rest, again, strict=True)
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in pairs)
    b.sampler.set_epoch(3)  # the skip applies only to the interrupted epoch
    assert len(list(b)) == 5


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_and_config_give_identical_metrics(tmp_path):
    short = (*TINY, "trainer.max_epochs=1", "~callbacks.fgsm_sweep")
    a = train(compose_cfg(tmp_path / "a", *short, "seed=7"))
    b = train(compose_cfg(tmp_path / "b", *short, "seed=7"))
    c = train(compose_cfg(tmp_path / "c", *short, "seed=8"))
    assert stable(a) == stable(b)
    assert rows(tmp_path / "a" / "epochs.csv") == rows(tmp_path / "b" / "epochs.csv")
    assert stable(c) != stable(a)  # the seed matters: the test would catch a constant pipeline
    assert rows(tmp_path / "a" / "epochs.csv") != rows(tmp_path / "c" / "epochs.csv")


@pytest.mark.slow
def test_smoke_command_twice_gives_identical_metrics_json(tmp_path):
    """The issue's command, twice, in fresh processes: metrics.json equal but for VOLATILE_KEYS."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    out = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        cmd = [
            sys.executable,
            "-m",
            "ssimlayer.train",
            "experiment=shallow",
            "debug=smoke",
            "seed=7",
            "logger=csv",
            f"hydra.run.dir={run}",
            f"paths.output_root={tmp_path}",
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out.append(json.loads((run / "metrics.json").read_text()))
    assert stable(out[0]) == stable(out[1])


# --- clear errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["model", "data", "experiment"])
def test_unknown_config_name_is_a_clear_error(tmp_path, monkeypatch, capsys, earlier_run, group):
    code, err = run_cli(monkeypatch, capsys, tmp_path, f"{group}=nonexistent")
    assert code != 0
    assert f"Could not find '{group}/nonexistent'" in err
    assert f"Available options in '{group}'" in err  # how to fix: the valid names
    assert "Traceback" not in err
    assert_untouched(earlier_run)


@pytest.mark.parametrize(
    "eps, shown", [("[0.0,-0.1]", "-0.1"), ("[0.0,abc]", "'abc'"), ("abc", "'abc'")]
)
def test_negative_or_non_numeric_eps_is_a_clear_error(
    tmp_path, monkeypatch, capsys, earlier_run, eps, shown
):
    code, err = run_cli(monkeypatch, capsys, tmp_path, *TINY, f"callbacks.fgsm_sweep.eps={eps}")
    assert code == 2
    assert "FGSM eps must be finite and >= 0" in err and f"got {shown}" in err
    assert "e.g. eps=[0.0,0.01]" in err and "Traceback" not in err
    assert_untouched(earlier_run)


@pytest.mark.parametrize(
    "override, shown",
    [
        (
            "model.optimizer.lr=-1",
            "model.optimizer.lr=-1 is not valid: it must be a finite number > 0",
        ),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not valid: a whole number >= 1"),
        ("model.optimizer.momentum=1.5", "model.optimizer.momentum=1.5 is not valid"),
    ],
)
def test_bad_value_stops_before_anything_is_created(
    tmp_path, monkeypatch, capsys, earlier_run, override, shown
):
    code, err = run_cli(monkeypatch, capsys, tmp_path, *TINY, override)
    assert code == 2
    assert shown in err and "(e.g. " in err and "Traceback" not in err
    assert err.count(shown) == 1  # printed once, not once per handler
    assert "nothing was written" in err
    runs = [p for p in (tmp_path / "default" / "runs").iterdir() if p != earlier_run]
    assert runs == []  # no run dir left behind (and so no W&B run either)
    assert_untouched(earlier_run)


def test_missing_dataset_folder_is_a_clear_error(tmp_path, monkeypatch, capsys, earlier_run):
    code, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "model=shallow_conv",
        "model.net.widths=[4,4]",
        "trainer=cpu",
        "logger=none",
        f"data.root={tmp_path / 'no_such_folder'}",
    )
    assert code == 2
    assert "CIFAR-10 not found" in err and "no_such_folder" in err
    assert "Set data.root=" in err and "Traceback" not in err
    assert_untouched(earlier_run)


def _cifar_bin_folder(root: Path, bad: bytes | None = None) -> Path:
    root.mkdir()
    record = bytes([3]) + bytes(3072)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (root / name).write_bytes(record * 2)
    if bad is not None:
        (root / "data_batch_1.bin").write_bytes(bad)
    return root


@pytest.mark.parametrize("case", ["truncated", "corrupted"])
def test_truncated_or_corrupted_bin_file_is_a_clear_error(
    tmp_path, monkeypatch, capsys, earlier_run, case
):
    bad = (bytes([3]) + bytes(3072)) * 2
    bad = bad[:-100] if case == "truncated" else bytes([200]) + bad[1:]
    root = _cifar_bin_folder(tmp_path / "cifar", bad)
    with pytest.raises(
        ValueError, match="truncated or corrupted" if case == "truncated" else "label 200"
    ):
        read_cifar_binary(root / "data_batch_1.bin")
    # through the entry point, with the size check off so that the reader meets the bad file
    code, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "model=shallow_conv",
        "model.net.widths=[4,4]",
        "trainer=cpu",
        "logger=none",
        f"data.root={root}",
        "data.verify=false",
    )
    assert code == 2
    assert "data_batch_1.bin" in err and "Re-copy it" in err and "Traceback" not in err
    assert_untouched(earlier_run)


def test_truncated_pickle_batch_names_the_file(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x04\x95 truncated")
    with pytest.raises(ValueError, match=r"data_batch_1: cannot be unpickled.*truncated"):
        read_cifar_pickle(path)


def test_kernel_larger_than_padded_input_is_a_clear_error(
    tmp_path, monkeypatch, capsys, earlier_run
):
    code, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        *TINY,
        "data.image_size=8",
        "model.net.kernel_sizes=[9,5]",
        "model.net.paddings=[0,2]",
    )
    assert code == 2
    assert "larger than the padded input" in err and "use a smaller kernel or more padding" in err
    assert "Traceback" not in err
    assert_untouched(earlier_run)


def test_in_channels_not_divisible_by_groups_is_a_clear_error(
    tmp_path, monkeypatch, capsys, earlier_run
):
    code, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        *TINY,
        "+model.net.layers.0.groups=2",
        "model.net.widths=[4,4]",
    )
    assert code == 2
    assert "in_channels=3" in err and "divisible by groups=2" in err and "Traceback" not in err
    assert_untouched(earlier_run)
    with pytest.raises(ValueError, match="in_channels=3 is not divisible by groups=2; choose"):
        ssim_conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 1, 3, 3), groups=2)


def test_checkpoint_from_another_model_is_a_clear_error(tmp_path, monkeypatch, capsys, earlier_run):
    code, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        *TINY,
        "model=shallow_conv",
        "trainer.max_epochs=1",
        "~callbacks.fgsm_sweep",
        f"hydra.run.dir={tmp_path / 'conv_run'}",
    )
    assert code == 0, err
    ckpt = tmp_path / "conv_run" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    code, err = run_cli(monkeypatch, capsys, tmp_path, *TINY, f"ckpt_path={ckpt}")
    assert code == 2
    assert "CheckpointMismatchError" in err
    assert "model=shallow_conv" in err and "model=shallow_ssim" in err  # both configs named
    assert "Resume it with the same model settings" in err and "Traceback" not in err
    assert ckpt.read_bytes() == before
    assert_untouched(earlier_run)


def test_wandb_misconfigured_run_goes_on_with_csv_and_says_so(
    tmp_path, monkeypatch, capsys, caplog
):
    # An argument wandb.init does not take stands for any W&B set-up error (bad key, no network).
    with pytest.warns(RuntimeWarning, match="continuing with CSV logging"):
        code, err = run_cli(
            monkeypatch,
            capsys,
            tmp_path,
            *TINY,
            "trainer.max_epochs=1",
            "~callbacks.fgsm_sweep",
            "logger=wandb",
            "~logger.csv",
            "+logger.wandb.not_a_wandb_setting=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    assert code == 0, err
    assert (tmp_path / "run" / "csv" / "metrics.csv").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["finished"]


def test_entry_point_subprocess_exit_code_and_short_stderr(tmp_path):
    """The real CLI: a known error is a few lines on stderr and exit code 2; HYDRA_FULL_ERROR=1
    still gives the traceback."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        "-m",
        "ssimlayer.train",
        *TINY,
        "callbacks.fgsm_sweep.eps=[-1.0]",
        f"paths.output_root={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "got -1.0" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 5, proc.stderr


# --- numerical safety -------------------------------------------------------------------------


def test_nan_loss_stops_with_the_step_after_saving_a_checkpoint(tmp_path):
    cfg = compose_cfg(
        tmp_path / "run",
        *TINY,
        "model=shallow_conv",
        "model.optimizer.lr=1e30",
        "model.optimizer.momentum=0.0",
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"training loss is (nan|inf|-inf) at global step "
        r"(\d+) \(epoch \d+, batch \d+\)",
    ) as e:
        train(cfg)
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("nonfinite-step*.ckpt")
    step = int(ckpt.stem.removeprefix("nonfinite-step"))
    assert f"global step {step} " in str(e.value) and str(ckpt) in str(e.value)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())  # weights before it
