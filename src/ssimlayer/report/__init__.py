"""Reads run dirs under ``outputs/`` and writes the paper-versus-measured report. Never trains."""

from ssimlayer.report.claims import CLAIMS, Claim
from ssimlayer.report.collect import Run, find_runs
from ssimlayer.report.verdict import Verdict, compare

__all__ = ["CLAIMS", "Claim", "Run", "Verdict", "compare", "find_runs"]
