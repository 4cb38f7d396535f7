"""Reads run dirs under ``outputs/`` and writes the paper-versus-measured report. Never trains."""

from ssimlayer.report.claims import CLAIMS, Claim
from ssimlayer.report.verdict import Verdict, compare
from ssimlayer.utils.runs import Run, find_runs

__all__ = ["CLAIMS", "Claim", "Run", "Verdict", "compare", "find_runs"]
