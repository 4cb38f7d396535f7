"""The LightningModule that trains every paper network; the callbacks of Figs. 6 and 9 and the
layer-health statistics (issue 28)."""

from ssimlayer.lightning.callbacks import build_callbacks
from ssimlayer.lightning.fgsm_sweep import FGSMSweep
from ssimlayer.lightning.filters import FilterVisualisation
from ssimlayer.lightning.layer_health import LayerHealth
from ssimlayer.lightning.loggers import build_loggers
from ssimlayer.lightning.module import ClassifierModule
from ssimlayer.lightning.run_summary import RunSummary

__all__ = [
    "ClassifierModule",
    "FilterVisualisation",
    "FGSMSweep",
    "LayerHealth",
    "RunSummary",
    "build_callbacks",
    "build_loggers",
]
