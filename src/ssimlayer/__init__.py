"""ssimlayer: the SSIMLayer of Abobakr et al. as a PyTorch layer, and the pipeline that tests its claims.

The layer needs only torch::

    from ssimlayer import SSIMConv2d, ssim_conv2d

For CPU training, :func:`retain_freed_memory` spares the page faults of fresh memory every step.
"""

from ssimlayer.functional import ssim_conv2d
from ssimlayer.memory import retain_freed_memory
from ssimlayer.nn import SSIMConv2d

__all__ = ["SSIMConv2d", "retain_freed_memory", "ssim_conv2d"]
__version__ = "0.1.0"
