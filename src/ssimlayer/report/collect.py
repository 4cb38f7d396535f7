"""Find finished training runs under ``outputs/`` and load what they wrote."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Run", "find_runs", "read_csv"]


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Run:
    """One training run dir: its ``metrics.json`` and the tables and plots beside it."""

    path: Path
    metrics: dict
    epochs: list[dict[str, str]] = field(default_factory=list)
    fgsm: list[dict[str, str]] = field(default_factory=list)
    filters: dict | None = None
    provenance: dict | None = None

    @property
    def model(self) -> str:
        return self.metrics.get("model", "?")

    @property
    def schedule(self) -> str:
        return self.metrics.get("schedule", "unknown")

    @property
    def synthetic(self) -> bool:
        return "Synthetic" in str(self.metrics.get("data", ""))

    def fgsm_top(self, split: str, eps: float, k: int) -> float | None:
        for row in self.fgsm:
            if row["split"] == split and abs(float(row["eps"]) - eps) < 1e-9:
                return float(row[f"top{k}"])
        return None

    @property
    def device(self) -> str:
        """Where it trained: the accelerator Lightning used (older runs' "device" field names the
        module's device after fit, when Lightning has moved it back to the CPU)."""
        accelerator = str(self.metrics.get("accelerator", ""))
        if "CUDA" in accelerator:
            return self.metrics.get("device_name") or "cuda"
        return str(self.metrics.get("device", "?"))

    @property
    def commit(self) -> str:
        git = (self.provenance or {}).get("git", {})
        sha = str(git.get("sha", "?"))[:8]
        return sha + ("+dirty" if git.get("dirty") else "")


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_runs(root: str | Path, include_synthetic: bool = False) -> list[Run]:
    """Every finished run under ``root`` (recursively), real-data runs only unless asked."""
    runs = []
    for metrics_path in sorted(Path(root).rglob("metrics.json")):
        metrics = _load_json(metrics_path)
        if not metrics or not metrics.get("finished") or "model" not in metrics:
            continue
        folder = metrics_path.parent
        run = Run(
            path=folder,
            metrics=metrics,
            epochs=read_csv(folder / "epochs.csv"),
            fgsm=read_csv(folder / "fgsm_sweep.csv"),
            filters=_load_json(folder / "filters_norms.json"),
            provenance=_load_json(folder / "provenance.json"),
        )
        if run.synthetic and not include_synthetic:
            continue
        runs.append(run)
    return runs
