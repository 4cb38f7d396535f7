"""Attacks and robustness sweeps: plain functions on [0, 1] images, no Lightning."""

from ssimlayer.robustness.attacks import (
    AttackSpec,
    default_specs,
    pgd,
    robustness_sweep,
    run_attack,
    square,
)
from ssimlayer.robustness.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_sweep
from ssimlayer.robustness.fgsm import fgsm, fgsm_sweep
from ssimlayer.robustness.masking import CHECKS, masking_checks

__all__ = [
    "fgsm",
    "fgsm_sweep",
    "pgd",
    "square",
    "run_attack",
    "AttackSpec",
    "default_specs",
    "robustness_sweep",
    "corrupt",
    "corruption_sweep",
    "CORRUPTIONS",
    "SEVERITIES",
    "masking_checks",
    "CHECKS",
]
