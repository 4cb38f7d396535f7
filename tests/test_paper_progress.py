"""experiments/paper/progress.py turns a resume archive's runs into small result files."""

import csv
import json

from experiments.paper import archive, progress


def _member(folder, model, seed, vals):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "name": "table1",
                "model": model,
                "seed": seed,
                "finished": False,
                "data": "ssimlayer.data.CIFAR10DataModule",
                "train_images": 50000,
                "final_val_top1_pct": vals[-1],
                "best_val_top1_pct": max(vals),
                "best_val_top1_epoch": vals.index(max(vals)) + 1,
                "final_train_top1_pct": 50.0,
                "epochs": len(vals),
                "wall_time_s": 9.0,
                "device_name": "NVIDIA H200",
            }
        )
    )
    rows = "".join(
        f"{e},{e * 10},1.0,40.0,90.0,1.1,{v},91.0,{1.0 / e},0.02\n" for e, v in enumerate(vals, 1)
    )
    (folder / "epochs.csv").write_text(
        "epoch,step,train_loss,train_top1_pct,train_top5_pct,val_loss,val_top1_pct,val_top5_pct,"
        "health/ssim3/w_std,health/ssim3/out_std\n" + rows
    )


def test_progress_writes_each_runs_curves_and_summary(tmp_path, capsys):
    state = tmp_path / "state"
    _member(state / "table1/fig4_ssim_pack/0_fig4_ssim_seed0", "fig4_ssim", 0, [30.0, 45.0, 44.0])
    _member(state / "table1/fig4_ssim_pack/1_fig4_ssim_seed1", "fig4_ssim", 1, [31.0, 46.0, 47.0])
    archive.write(state, tmp_path / "archive", "any config", sequence=1)
    out = tmp_path / "results"
    assert progress.main(["--archive", str(tmp_path / "archive"), "--out", str(out)]) == 0
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [
        (r["seed"], r["epochs"], r["final_val_top1_pct"], r["best_val_top1_epoch"]) for r in summary
    ] == [("0", "3", "44.0", "2"), ("1", "3", "47.0", "3")]
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert len(curves) == 6 and curves[2]["val_top1_pct"] == "44.0"
    assert float(curves[1]["ssim_w_std"]) == 0.5 and curves[1]["ssim_out_std"] == "0.02"
    assert (out / "curves.png").stat().st_size > 0 and (out / "layer_health.png").stat().st_size > 0
    assert "| fig4_ssim | 2 | 3/3 | 45.50 ± 2.12 | 46.00 ± 1.41 | 2/3 |" in capsys.readouterr().out
