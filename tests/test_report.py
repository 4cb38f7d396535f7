"""The report reads run dirs and applies its stated verdict rule; it never invents numbers."""

import csv
import json
import math
from pathlib import Path

import pytest

from ssimlayer.report import compare
from ssimlayer.report.build import build_report


def test_verdict_rule_greater():
    assert compare([80, 81, 82], [70, 71, 72]).verdict == "holds"
    assert compare([70, 71, 72], [80, 81, 82]).verdict == "does not hold"
    assert compare([70, 75, 80], [71, 76, 79]).verdict == "inconclusive"
    assert compare([80, 81], [70, 71, 72]).verdict.startswith("inconclusive (fewer than 3")
    # the ablations' 2-seed screen: the same rule from 2 seeds on, never from 1 (no spread)
    assert compare([80, 81], [70, 71, 72], min_seeds=2).verdict == "holds"
    assert compare([80], [70, 71], min_seeds=1).verdict.startswith("inconclusive (fewer than 2")
    v = compare([80, 81, 82], [70, 71, 72])
    assert v.difference == pytest.approx(10.0) and v.standard_error == pytest.approx(
        math.sqrt(2 / 3)
    )


def test_verdict_rule_equal():
    assert compare([77, 78, 76], [76.5, 77.5, 77], kind="equal").verdict == "holds"
    assert compare([80, 80.5, 81], [70, 70.5, 71], kind="equal").verdict == "does not hold"
    with pytest.raises(ValueError, match="kind must be"):
        compare([1, 2, 3], [1, 2, 3], kind="less")


def _write_run(
    folder,
    model,
    seed,
    val,
    fgsm_val,
    schedule="cpu_short",
    data="CIFAR10DataModule",
    name="table1",
    health=None,
):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "name": name,
                "model": model,
                "seed": seed,
                "schedule": schedule,
                "finished": True,
                "data": f"ssimlayer.data.{data}",
                "final_train_top1": val + 0.05,
                "final_val_top1": val,
                "best_val_top1": val + 0.01,
                "epochs": 4,
                "wall_time_s": 60.0,
                "device": "cpu",
            }
        )
    )
    health = health or {}
    columns = "".join(f",{k}" for k in health)
    values = "".join(f",{v}" for v in health.values())
    (folder / "epochs.csv").write_text(
        f"epoch,step,train/loss,train/top1,train/top5,val/loss,val/top1,val/top5{columns}\n"
        f"0,10,2.0,0.3,0.8,2.0,{val - 0.1},0.8{values}\n1,20,1.5,0.4,0.9,1.6,{val},0.9{values}\n"
    )
    (folder / "fgsm_sweep.csv").write_text(
        f"split,eps,top1,top5\nval,0.0,{val},0.9\nval,0.007,{fgsm_val},0.8\n"
        f"train,0.0,{val},0.9\ntrain,0.007,{fgsm_val},0.8\n"
    )


def test_report_from_run_dirs(tmp_path):
    outputs = tmp_path / "outputs"
    for seed, (plain, ssim) in enumerate([(0.60, 0.70), (0.61, 0.72), (0.62, 0.71)]):
        _write_run(outputs / f"a/{seed}_plain", "fig4_plain", seed, plain, 0.20)
        _write_run(outputs / f"a/{seed}_ssim", "fig4_ssim", seed, ssim, 0.20 + 0.001 * seed)
    _write_run(outputs / "smoke/x", "fig4_ssim", 0, 0.99, 0.99, data="SyntheticDataModule")
    _write_run(outputs / "ablations/cpu_short/x/fig4_ssim_seed0", "fig4_ssim", 0, 0.99, 0.99)
    report = build_report(outputs).read_text()
    assert "CIFAR-10 (JPEG-derived copy)" in report
    # the smoke run and the ablation run are left out
    assert "| fig4_ssim | 3 |" in report and "| fig4_plain | 3 |" in report
    assert "71.00 ± 1.00 (n=3)" in report  # SSIM validation mean ± std, in percent
    assert "| 78 / 73.8 |" in report  # the paper's Table 1 numbers, as a paper column
    claims = (outputs / "report" / "claims.csv").read_text()
    assert "table1_val" in claims and ",holds" in claims
    assert "Not measured: data unavailable" in report
    assert (outputs / "report" / "fig5_cpu_short.png").stat().st_size > 0
    assert (outputs / "report" / "fig9_cpu_short.png").stat().st_size > 0


def test_report_shows_layer_health_beside_the_learning_curves(tmp_path):
    outputs = tmp_path / "outputs"
    for seed in range(2):
        for model, std in (("fig4_plain", 0.1), ("fig4_ssim", 0.006)):
            health = {
                "health/conv1/out_std": 0.5,
                f"health/{'ssim' if 'ssim' in model else 'conv'}3/out_std": std + 0.001 * seed,
                "health/conv1/grad_ratio": 0.01,
                "health/conv1/out_near0": 0.02,
            }
            _write_run(outputs / f"a/{seed}_{model}", model, seed, 0.6, 0.2, health=health)
    report = build_report(outputs).read_text()
    curves = report.index("![Fig. 5 (Table 1 pair)](fig5_cpu_short.png)")
    health = report.index("![Layer health, Fig. 5 (Table 1 pair)](fig5_health_cpu_short.png)")
    assert curves < health < report.index("![FGSM sweep](fig9")  # after the learning curves
    assert (outputs / "report" / "fig5_health_cpu_short.png").stat().st_size > 0
    # runs without the columns (from before the callback): no figure, no error
    old = tmp_path / "old"
    for seed in range(2):
        for model in ("fig4_plain", "fig4_ssim"):
            _write_run(old / f"a/{seed}_{model}", model, seed, 0.6, 0.2)
    assert "Layer health" not in build_report(old).read_text()


def test_report_with_no_runs_says_so(tmp_path):
    (tmp_path / "outputs").mkdir()
    report = build_report(tmp_path / "outputs").read_text()
    assert "No finished real-data runs were found" in report


def test_report_table2_section_on_the_stand_in_data(tmp_path):
    outputs = tmp_path / "outputs"
    for seed in range(3):
        _write_run(outputs / f"a/{seed}_plain", "fig4_plain", seed, 0.60, 0.20)
        _write_run(outputs / f"a/{seed}_ssim", "fig4_ssim", seed, 0.50, 0.30 + 0.01 * seed)
        for model, val in (("fig4_plain", 0.40 + 0.01 * seed), ("fig4_ssim", 0.30)):
            _write_run(
                outputs / f"t2/{seed}_{model}",
                model,
                seed,
                val,
                0.10,
                schedule="cpu_table2",
                data="ImageFolderSplitsDataModule",
                name="table2",
            )
    report = build_report(outputs).read_text()
    head, table2 = report.split("## Table 2 and Fig. 10", 1)
    # Table 2's runs stay out of the CIFAR-10 schedule sections and are labelled as the stand-in
    assert "cpu_table2" not in head and "## Schedule `cpu_short`" in head
    assert "except the Table 2 section's (Tiny ImageNet, 7 CIFAR-10 classes" in head
    assert "Tiny ImageNet, 7 CIFAR-10 classes (stand-in; chance 14.3 %)" in table2
    assert "| 57.51 / 60.4 |" in table2 and "| 73.35 / 70 |" in table2  # paper columns
    assert "41.00 ± 1.00 (n=3)" in table2  # plain validation mean ± std, in percent
    assert "Not measured" not in report
    claims = (outputs / "report" / "claims.csv").read_text()
    assert "table2_cpu_table2,table2_val" in claims and ",does not hold" in claims
    assert "table2_cpu_table2,fig10_val_top1,fig4_ssim,fig4_plain" in claims
    assert (outputs / "report" / "fig10_cpu_table2.png").stat().st_size > 0
    assert (outputs / "report" / "table2_cpu_table2_curves.png").stat().st_size > 0


def test_report_paper_protocol_section_only_for_500_epochs_on_50000_images(tmp_path):
    outputs = tmp_path / "outputs"
    _write_run(outputs / "short/0_plain", "fig4_plain", 0, 0.6, 0.2)
    (outputs / "short/0_plain/config_resolved.yaml").write_text(
        "data:\n  _target_: ssimlayer.data.CIFAR10DataModule\n  train_batches: [1]\n"
    )
    assert "Paper protocol" not in build_report(outputs).read_text()
    for seed, (plain, ssim) in enumerate([(0.70, 0.75), (0.71, 0.77), (0.72, 0.76)]):
        for model, val in (("fig4_plain", plain), ("fig4_ssim", ssim)):
            folder = outputs / f"paper/{model}_pack/{seed}_{model}_seed{seed}"
            _write_run(folder, model, seed, val, 0.2, schedule="paper")
            metrics = json.loads((folder / "metrics.json").read_text())
            metrics.update(epochs=500, train_images=50_000)
            (folder / "metrics.json").write_text(json.dumps(metrics))
    report = build_report(outputs).read_text()
    assert "## Paper protocol: 500 epochs, 50,000 training images, 3 seeds, cpu" in report
    rows = list(csv.DictReader(open(outputs / "report" / "runs.csv")))
    images = {(r["schedule"], r["model"]): r["train_images"] for r in rows}
    assert images[("cpu_short", "fig4_plain")] == "10000"
    assert images[("paper", "fig4_ssim")] == "50000"


def test_readings_section_pairs_each_setting_with_the_other_models_baseline(tmp_path):
    from ssimlayer.report.build import _readings_section

    path = tmp_path / "results.csv"
    rows = [  # setting, model, seed, final, best, diverged
        ("default", "fig4_plain", 0, 60.0, 61.0, "no"),
        ("default", "fig4_plain", 1, 62.0, 63.0, "no"),
        ("default", "fig4_ssim", 0, 40.0, 40.0, "no"),
        ("default", "fig4_ssim", 1, 42.0, 42.0, "no"),
        ("init_std_0.1", "fig4_ssim", 0, 50.0, 51.0, "no"),
        ("init_std_0.1", "fig4_ssim", 1, 52.0, 53.0, "yes"),
    ]
    lines = ["setting,model,seed,schedule,final_val_top1_pct,best_val_top1_pct,diverged"]
    lines += [f"{s},{m},{seed},cpu_medium,{f},{b},{d}" for s, m, seed, f, b, d in rows]
    path.write_text("\n".join(lines) + "\n")
    section = "\n".join(_readings_section(path))
    assert "## Readings of the paper (issue 28 ablations, `cpu_medium`)" in section
    assert (
        "| fig4_ssim vs fig4_plain | default | 41.00 ± 1.41 (n=2) / 41.00 ± 1.41 (n=2) "
        "| 61.00 ± 1.41 (n=2) / 62.00 ± 1.41 (n=2) | -20.00 ± 1.41 | does not hold |" in section
    )
    # the 2-seed screen, summed up per outcome
    assert "- The claim does not hold under: fig4 `default`, fig4 `init_std_0.1`." in section
    # the setting changes the SSIM model only: the plain model keeps its baseline
    assert "| init_std_0.1 | 51.00 ± 1.41 (n=2) / 52.00 ± 1.41 (n=2), 1 NaN | 61.00" in section
    assert "| +" not in section and "-10.00" in section
    assert _readings_section(tmp_path / "missing.csv") == []


def test_no_committed_run_ended_diverged():
    """Issue 28: a run that diverged (NaN guard) ends at chance; none may stand in the report."""
    committed = Path(__file__).parents[1] / "experiments" / "report" / "runs.csv"
    with open(committed) as f:
        rows = list(csv.DictReader(f))
    assert rows
    at_chance = [
        (r["model"], r["schedule"], r["seed"])
        for r in rows
        if not float(r["final_val_top1_pct"]) > 15.0  # CIFAR-10 chance 10 %, Table 2's 14.3 %
    ]
    assert at_chance == []


def test_curves_put_each_validation_at_its_own_epoch():
    from ssimlayer.report.plots import _mean_band

    # validated every second epoch (empty cells elsewhere); the second run stopped after epoch 4
    epochs, mean, low, high = _mean_band([{2: 50.0, 4: 40.0, 6: 35.0}, {2: 52.0, 4: 44.0}])
    assert epochs == [2, 4]
    assert mean == [51.0, 42.0]
    assert low[1] == pytest.approx(42.0 - math.sqrt(8)) and high[1] == pytest.approx(
        42 + math.sqrt(8)
    )
