"""The robustness entry point: config composition, run discovery, and one end-to-end evaluation of a
tiny trained pair (W&B offline, everything inside tmp_path)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import DictConfig

from ssimlayer.eval import evaluate, find_eval_runs, pair_up
from ssimlayer.utils import compose_config

TINY_EVAL = [
    "eval.num_examples=8",
    "eval.batch_size=4",
    "eval.eps=[0.01,0.03137254901960784]",
    "eval.pgd_steps=[2,3]",
    "eval.transfer_steps=2",
    "eval.large_eps=[0.1]",
    "eval.square_eps=[0.03137254901960784]",
    "eval.square_queries=5",
    "eval.corruptions=[jpeg,gaussian_noise]",
    "eval.severities=[1,5]",
    "eval.progress=false",
]


def eval_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    return compose_config(
        config_name="eval",
        overrides=[
            f"paths.output_dir={tmp_path / 'eval'}",
            f"paths.output_root={tmp_path}",
            "wandb.enabled=false",
            *overrides,
        ],
    )


def test_eval_config_composes_with_debug_smoke(tmp_path):
    cfg = eval_cfg(tmp_path, "debug=smoke")
    assert cfg.eval.pgd_steps == [10, 50] and cfg.eval.smoke.num_examples > 0
    assert list(cfg.eval.pair) == ["fig4_plain", "fig4_ssim"]


def test_missing_ckpt_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match="nope.ckpt"):
        find_eval_runs([], str(tmp_path / "nope.ckpt"))


def test_missing_run_dir_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match="no_such_run"):
        find_eval_runs([str(tmp_path / "no_such_run")], None)


def test_nothing_to_evaluate_raises(tmp_path):
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(eval_cfg(tmp_path))


def test_negative_eps_raises_naming_value(tmp_path, tiny_pair):
    cfg = eval_cfg(tmp_path, f"runs=[{tiny_pair[0]}]", *TINY_EVAL, "eval.eps=[0.01,-0.5]")
    with pytest.raises(ValueError, match="-0.5"):
        evaluate(cfg)


def test_multirun_dir_expands_and_pairs_by_seed(tiny_pair):
    runs = find_eval_runs([str(tiny_pair[0].parent)], None)
    assert [r.path for r in runs] == tiny_pair
    assert all(r.ckpt.name == "last.ckpt" for r in runs)
    (pair,) = pair_up(runs)
    assert [r.model for r in pair] == ["fig4_plain", "fig4_ssim"]


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_pair_writes_every_output(tmp_path, tiny_pair):
    cfg = eval_cfg(tmp_path, f"runs=[{tiny_pair[0]},{tiny_pair[1]}]", *TINY_EVAL)
    evaluate(cfg)
    for run_dir in tiny_pair:
        with open(run_dir / "robustness.csv") as f:
            assert f.readline().strip() == "attack,eps,steps,top1_pct,top5_pct"
        rows = _read(run_dir / "robustness.csv")
        kinds = {(r["attack"], int(r["steps"])) for r in rows}
        assert {
            ("clean", 0),
            ("fgsm", 1),
            ("pgd", 2),
            ("pgd", 3),
            ("square", 5),
            ("pgd_transfer", 2),
        } <= kinds
        assert all(0 <= float(r["top1_pct"]) <= float(r["top5_pct"]) <= 100 for r in rows)
        clean = float(rows[0]["top1_pct"])
        assert all(float(r["top1_pct"]) == clean for r in rows if float(r["eps"]) == 0)

        with open(run_dir / "corruptions.csv") as f:
            assert f.readline().strip() == "corruption,severity,top1_pct,top5_pct"
        corr = _read(run_dir / "corruptions.csv")
        assert [r["corruption"] for r in corr] == ["clean"] + ["jpeg"] * 2 + [
            "gaussian_noise"
        ] * 2 + ["mean"]
        mean = sum(float(r["top1_pct"]) for r in corr[1:-1]) / 4
        assert float(corr[-1]["top1_pct"]) == pytest.approx(mean)

        masking = json.loads((run_dir / "masking_checks.json").read_text())
        assert set(masking["checks"]) == {
            "pgd_le_fgsm",
            "more_steps_le_fewer",
            "large_eps_to_zero",
            "blackbox_le_whitebox",
            "transfer_le_whitebox",
        }
        assert all(
            c["verdict"] in ("pass", "fail") and c["details"] for c in masking["checks"].values()
        )
        assert masking["n_examples"] == 8
        assert (run_dir / "robustness.png").is_file() and (run_dir / "corruptions.png").is_file()
    summary = _read(tmp_path / "eval" / "summary_robustness.csv")
    assert {r["model"] for r in summary} == {"fig4_plain", "fig4_ssim"}
    assert all(r["n_runs"] == "1" for r in summary)
    assert all(
        r["top1_pct_std"] == "nan" for r in summary
    )  # one seed: its spread is unknown, not 0
    assert (tmp_path / "eval" / "summary_corruptions.csv").is_file()
