"""ssimlayer: the SSIMLayer of Abobakr et al. as a PyTorch layer, and the pipeline that tests its claims.

The layer needs only torch::

    from ssimlayer import SSIMConv2d, ssim_conv2d

For CPU training, :func:`retain_freed_memory` spares the page faults of fresh memory every step.

Importing the package also registers the layer's accelerators (:mod:`ssimlayer._fusion`: Triton
kernels on CUDA, torch.compile of the elementwise work) with :mod:`ssimlayer.functional`, so that
``ssim_conv2d`` takes the fastest path by default.
"""

from ssimlayer import _fusion  # noqa: F401  (registers the accelerators)
from ssimlayer.functional import ssim_conv2d
from ssimlayer.memory import retain_freed_memory
from ssimlayer.nn import SSIMConv2d

__all__ = ["SSIMConv2d", "retain_freed_memory", "ssim_conv2d"]
__version__ = "0.1.0"
