"""The paper's claims and its own numbers (shown only as "paper" columns beside ours)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Claim", "CLAIMS", "PAPER", "TABLE2_CLAIMS", "TABLE2_PAPER"]

# Percentages as printed in the paper (§3.2, §3.3, §3.4, Tables 1 and 2).
PAPER = {
    ("fig4_plain", "train_top1"): 84.9,
    ("fig4_plain", "val_top1"): 73.8,
    ("fig4_ssim", "train_top1"): 96.5,
    ("fig4_ssim", "val_top1"): 78.0,
    ("shallow_conv", "val_top1"): 70.8,
    ("shallow_ssim", "val_top1"): 77.26,
    ("fig4_ssim", "val_top1_with_relu"): 77.82,
    ("fig4_ssim_norelu", "val_top1"): 76.04,
    ("fig4_plain", "fgsm_val_0.007_top1"): 23.03,
    ("fig4_plain", "fgsm_val_0.007_top5"): 77.56,
    ("fig4_ssim", "fgsm_val_0.007_top1"): 38.35,
    ("fig4_ssim", "fgsm_val_0.007_top5"): 92.5,
}

# Table 2 (§3.4.1): the Fig. 4 pair on 15K ImageNet images of the 10 CIFAR-10 classes. Fig. 10 (its
# FGSM sweep) has no number in the text.
TABLE2_PAPER = {
    ("fig4_plain", "train_top1"): 57.51,
    ("fig4_plain", "val_top1"): 60.40,
    ("fig4_ssim", "train_top1"): 73.35,
    ("fig4_ssim", "val_top1"): 70.0,
}


@dataclass(frozen=True)
class Claim:
    """'model_a beats model_b on metric' (or 'does not differ from', kind='equal')."""

    name: str
    text: str
    model_a: str
    model_b: str
    metric: str  # a Run metric key, or fgsm:<split>:<eps>:<k>
    kind: str = "greater"
    paper_a: float | None = None
    paper_b: float | None = None


CLAIMS = [
    Claim(
        "table1_val",
        "Table 1: the Fig. 4 SSIM network has higher validation accuracy than the plain network",
        "fig4_ssim",
        "fig4_plain",
        "final_val_top1",
        paper_a=78.0,
        paper_b=73.8,
    ),
    Claim(
        "table1_train",
        "Table 1: ... and higher training accuracy",
        "fig4_ssim",
        "fig4_plain",
        "final_train_top1",
        paper_a=96.5,
        paper_b=84.9,
    ),
    Claim(
        "shallow_val",
        "§3.2: the shallow 7x7 SSIM model beats the 7x7 conv model on validation",
        "shallow_ssim",
        "shallow_conv",
        "final_val_top1",
        paper_a=77.26,
        paper_b=70.8,
    ),
    Claim(
        "relu_not_needed",
        "§3.3 / Fig. 8: a ReLU after the SSIM layer makes no significant "
        "difference (best validation accuracy)",
        "fig4_ssim",
        "fig4_ssim_norelu",
        "best_val_top1",
        kind="equal",
        paper_a=77.82,
        paper_b=76.04,
    ),
    Claim(
        "fgsm_val_top1",
        "§3.4 / Fig. 9: under FGSM at eps = 0.007 the SSIM model keeps higher validation top-1",
        "fig4_ssim",
        "fig4_plain",
        "fgsm:val:0.007:1",
        paper_a=38.35,
        paper_b=23.03,
    ),
    Claim(
        "fgsm_val_top5",
        "§3.4 / Fig. 9: ... and higher validation top-5",
        "fig4_ssim",
        "fig4_plain",
        "fgsm:val:0.007:5",
        paper_a=92.5,
        paper_b=77.56,
    ),
    Claim(
        "fgsm_train_top1",
        "Fig. 9: the same on the training split (top-1; no number in the text)",
        "fig4_ssim",
        "fig4_plain",
        "fgsm:train:0.007:1",
    ),
]

TABLE2_CLAIMS = [
    Claim(
        "table2_train",
        "Table 2: the Fig. 4 SSIM network has higher training accuracy than the plain network",
        "fig4_ssim",
        "fig4_plain",
        "final_train_top1",
        paper_a=73.35,
        paper_b=57.51,
    ),
    Claim(
        "table2_val",
        "Table 2: ... and higher validation accuracy",
        "fig4_ssim",
        "fig4_plain",
        "final_val_top1",
        paper_a=70.0,
        paper_b=60.40,
    ),
    Claim(
        "fig10_val_top1",
        "Fig. 10: under FGSM at eps = 0.007 the SSIM model keeps higher validation top-1 "
        "(no number in the text)",
        "fig4_ssim",
        "fig4_plain",
        "fgsm:val:0.007:1",
    ),
    Claim(
        "fig10_val_top5",
        "Fig. 10: ... and higher validation top-5",
        "fig4_ssim",
        "fig4_plain",
        "fgsm:val:0.007:5",
    ),
    Claim(
        "fig10_train_top1",
        "Fig. 10: the same on the training split (top-1)",
        "fig4_ssim",
        "fig4_plain",
        "fgsm:train:0.007:1",
    ),
]
