"""Attacks and robustness sweeps: plain functions on [0, 1] images, no Lightning."""

from ssimlayer.robustness.fgsm import PAPER_EPS, fgsm, fgsm_sweep

__all__ = ["fgsm", "fgsm_sweep", "PAPER_EPS"]
