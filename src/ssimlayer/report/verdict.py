"""The rule that turns measured runs into a verdict on a claim of the paper.

Rule (stated in the report): with n >= 3 seeds per model, let d be the difference of the two
models' means (in the direction the paper claims) and se = sqrt(s_a^2/n_a + s_b^2/n_b) its standard
error from the spread across seeds.
- "A beats B" claims: **holds** if d > 2 se; **does not hold** if d < -2 se (B is better);
  **inconclusive** otherwise, or with fewer than 3 seeds per model.
- "no significant difference" claims (the ReLU after the SSIM layer): **holds** if |d| <= 2 se;
  **does not hold** if |d| > 2 se; inconclusive with fewer than 3 seeds.
Two standard errors is about a 95% two-sided interval; with 3 seeds it is a screening rule, not a test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ssimlayer.utils.runs import mean_std

__all__ = ["Verdict", "compare", "MIN_SEEDS", "RULE"]

MIN_SEEDS = 3
_RULE_TEXT = __doc__.split("Rule (stated in the report): ", 1)[1].strip()
RULE = _RULE_TEXT[0].upper() + _RULE_TEXT[1:]


@dataclass
class Verdict:
    verdict: str
    difference: float
    standard_error: float
    n_a: int
    n_b: int


def compare(
    a: list[float], b: list[float], kind: str = "greater", min_seeds: int = MIN_SEEDS
) -> Verdict:
    """Verdict on "a > b" (``kind="greater"``) or "a and b do not differ" (``kind="equal"``).
    ``min_seeds`` below 3 turns the rule into a screen (the ablations' 2 seeds per cell)."""
    if kind not in ("greater", "equal"):
        raise ValueError(f"kind must be 'greater' or 'equal', got {kind!r}")
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    d = mean_a - mean_b
    need = max(min_seeds, 2)  # one seed has no spread
    if len(a) < need or len(b) < need:
        return Verdict(f"inconclusive (fewer than {need} seeds)", d, math.nan, len(a), len(b))
    se = math.sqrt(std_a**2 / len(a) + std_b**2 / len(b))
    if kind == "greater":
        verdict = "holds" if d > 2 * se else "does not hold" if d < -2 * se else "inconclusive"
    else:
        verdict = "holds" if abs(d) <= 2 * se else "does not hold"
    return Verdict(verdict, d, se, len(a), len(b))
