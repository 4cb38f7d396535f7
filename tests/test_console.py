"""What a run prints: durations, the closing summary."""

from __future__ import annotations

import pytest

from ssimlayer.lightning.console import format_duration, print_summary


@pytest.mark.parametrize(
    "seconds, text", [(42, "42 s"), (450, "7.5 min"), (3 * 3600, "3.0 h"), (5 * 86400, "5.0 days")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_summary_gives_percent_fgsm_at_0007_and_the_run_dir(capsys, tmp_path):
    metrics = {
        "model": "fig4_ssim",
        "seed": 2,
        "epochs": 40,
        "wall_time_s": 700.0,
        "device": "cpu",
        "final_train_top1_pct": 61.784,
        "final_val_top1_pct": 57.42,
        "best_val_top1_pct": 58.55,
        "best_val_top1_epoch": 38,
    }
    (tmp_path / "fgsm_sweep.csv").write_text(
        "split,eps,top1_pct,top5_pct\nval,0.0,57.0,90\nval,0.007,32.52,80\ntrain,0.007,40,85\n"
    )
    print_summary(metrics, tmp_path)
    err = capsys.readouterr().err
    assert "fig4_ssim seed 2: 40 epochs in 11.7 min on cpu" in err
    assert "top-1 train 61.78 %, val 57.42 % (best val 58.55 % at epoch 38)" in err
    assert "FGSM eps 0.007 top-1: train 40.00 %, val 32.52 %" in err
    assert f"run dir {tmp_path}" in err


def test_progress_bar_shows_accuracies_in_percent_and_no_logger_version(monkeypatch):
    from pytorch_lightning.callbacks import TQDMProgressBar

    from ssimlayer.lightning.callbacks import ThrottledProgressBar

    shown = {"v_num": "ab1", "val/loss": 2.25, "val/top1": 0.172, "train/top5": 0.5}
    monkeypatch.setattr(TQDMProgressBar, "get_metrics", lambda self, trainer, module: dict(shown))
    items = ThrottledProgressBar().get_metrics(None, None)
    assert items == {"val/loss": 2.25, "val/top1": "17.2%", "train/top5": "50.0%"}
