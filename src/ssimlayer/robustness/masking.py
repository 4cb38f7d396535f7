"""Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019, "On Evaluating Adversarial
Robustness", §5): signs that a white-box attack is failing because the gradients are uninformative,
not because the model is robust. A layer built from ratios (Eq. 8) could flatten its gradients.

Each check reads the rows of ``robustness.csv`` (``attack, eps, steps, top1``) and returns a verdict
``{"check", "description", "verdict": "pass"|"fail"|"skipped", "tolerance", "details": [...]}``.
``pass`` means no sign of masking. ``tolerance`` is slack in top-1 accuracy (a fraction), for the
sampling noise of a few hundred images and PGD's random start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["masking_checks", "CHECKS"]

Row = dict[str, Any]

CHECKS = {
    "pgd_le_fgsm": "PGD (iterative) is at least as strong as FGSM: top1(PGD) <= top1(FGSM) at "
    "every eps",
    "more_steps_le_fewer": "more PGD steps are at least as strong: top1(PGD-more) <= "
    "top1(PGD-fewer) at every eps",
    "large_eps_to_zero": "accuracy falls toward 0 as eps grows: PGD top1 is non-increasing in eps "
    "and <= max_top1_at_large_eps at the largest eps (>= 0.1)",
    "blackbox_le_whitebox": "the black-box Square attack does not beat white-box PGD: "
    "top1(Square) >= top1(strongest PGD) at every eps",
    "transfer_le_whitebox": "PGD transferred from the other model does not beat white-box PGD: "
    "top1(transfer) >= top1(white-box PGD, same steps) at every eps",
}


def _index(rows: Sequence[Row]) -> dict[tuple[str, float, int], float]:
    return {
        (str(r["attack"]), round(float(r["eps"]), 8), int(r["steps"])): float(r["top1"])
        for r in rows
    }


def _verdict(name: str, details: list[Row], tol: float, **extra: Any) -> Row:
    verdict = "skipped" if not details else ("pass" if all(d["ok"] for d in details) else "fail")
    return {
        "check": name,
        "description": CHECKS[name],
        "verdict": verdict,
        "tolerance": tol,
        **extra,
        "details": details,
    }


def _pairs(
    idx: dict,
    attack_a: str,
    attack_b: str,
    steps_a: int | None,
    steps_b: int | None,
    tol: float,
    a_below_b: bool,
    labels: tuple[str, str] | None = None,
) -> list[Row]:
    """Compare attack a with attack b at every eps > 0 both have: ok if a <= b + tol (a_below_b) or
    a >= b - tol. ``labels`` name a and b in the details (default: the attacks)."""
    la, lb = labels or (attack_a, attack_b)
    out = []
    eps_a = {e: s for (a, e, s) in idx if a == attack_a and (steps_a is None or s == steps_a)}
    eps_b = {e: s for (a, e, s) in idx if a == attack_b and (steps_b is None or s == steps_b)}
    for e in sorted(e for e in eps_a.keys() & eps_b.keys() if e != 0):
        va, vb = idx[(attack_a, e, eps_a[e])], idx[(attack_b, e, eps_b[e])]
        ok = va <= vb + tol if a_below_b else va >= vb - tol
        out.append(
            {
                "eps": e,
                f"{la}_steps": eps_a[e],
                f"{la}_top1": va,
                f"{lb}_steps": eps_b[e],
                f"{lb}_top1": vb,
                "ok": bool(ok),
            }
        )
    return out


def masking_checks(
    rows: Sequence[Row],
    tol: float = 0.02,
    max_top1_at_large_eps: float = 0.05,
    large_eps: float = 0.1,
) -> dict[str, Row]:
    """Run every check of :data:`CHECKS` on one model's ``robustness.csv`` rows.

    Args:
        rows: dicts with ``attack``, ``eps``, ``steps``, ``top1`` (as :func:`robustness_sweep`).
        tol: slack in top-1 accuracy for the comparisons.
        max_top1_at_large_eps: top-1 that PGD must get below at ``eps >= large_eps``.
        large_eps: the eps of that check (0.1, where 8-bit images are unrecognisable).

    Returns:
        check name -> verdict dict; checks without the rows they need are ``skipped``.
    """
    if tol < 0:
        raise ValueError(f"masking_checks: tol must be >= 0, got {tol!r}")
    idx = _index(rows)
    pgd_steps = sorted({s for (a, _, s) in idx if a == "pgd"})
    out: dict[str, Row] = {}

    details = []
    for s in pgd_steps:
        details += _pairs(idx, "pgd", "fgsm", s, None, tol, a_below_b=True)
    out["pgd_le_fgsm"] = _verdict("pgd_le_fgsm", details, tol)

    details = []
    for fewer, more in zip(pgd_steps, pgd_steps[1:], strict=False):
        labels = ("more", "fewer")
        details += _pairs(idx, "pgd", "pgd", more, fewer, tol, a_below_b=True, labels=labels)
    out["more_steps_le_fewer"] = _verdict("more_steps_le_fewer", details, tol)

    # The largest-eps curve: PGD with the fewest steps is the one run at every eps.
    details = []
    if pgd_steps:
        s = pgd_steps[0]
        curve = sorted((e, v) for (a, e, st), v in idx.items() if a == "pgd" and st == s)
        clean = idx.get(("clean", 0.0, 0))
        if clean is not None:
            curve = [(0.0, clean)] + [c for c in curve if c[0] > 0]
        if curve and curve[-1][0] >= large_eps:
            for (e0, v0), (e1, v1) in zip(curve, curve[1:], strict=False):
                details.append(
                    {
                        "eps_from": e0,
                        "eps_to": e1,
                        "top1_from": v0,
                        "top1_to": v1,
                        "steps": s,
                        "ok": bool(v1 <= v0 + tol),
                    }
                )
            e, v = curve[-1]
            details.append(
                {
                    "eps": e,
                    "top1": v,
                    "steps": s,
                    "max_top1": max_top1_at_large_eps,
                    "ok": bool(v <= max_top1_at_large_eps),
                }
            )
    out["large_eps_to_zero"] = _verdict("large_eps_to_zero", details, tol, large_eps=large_eps)

    strongest = max(pgd_steps, default=None)  # None only where there is no PGD row to compare
    details = _pairs(idx, "square", "pgd", None, strongest, tol, a_below_b=False)
    out["blackbox_le_whitebox"] = _verdict("blackbox_le_whitebox", details, tol)

    details = []
    for s in pgd_steps:
        details += _pairs(idx, "pgd_transfer", "pgd", s, s, tol, a_below_b=False)
    out["transfer_le_whitebox"] = _verdict("transfer_le_whitebox", details, tol)
    return out
