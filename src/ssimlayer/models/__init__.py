"""The paper's networks as plain ``nn.Module``s, built from config with the layer type injected."""

from ssimlayer.models.convnet import ConvNet
from ssimlayer.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize

__all__ = ["ConvNet", "Normalize", "CIFAR10_MEAN", "CIFAR10_STD"]
