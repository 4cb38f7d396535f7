"""LightningDataModules and dataset readers. Images come out as float tensors in [0, 1]."""

from ssimlayer.data.base import ArrayDataset, ImageClassificationDataModule
from ssimlayer.data.cifar10 import CIFAR10DataModule
from ssimlayer.data.cifar10_files import (
    DatasetNotFoundError,
    find_cifar10,
    load_cifar10,
    read_cifar_binary,
    read_cifar_pickle,
    verify_cifar10,
)
from ssimlayer.data.device_loader import DeviceLoader, DeviceSampler
from ssimlayer.data.groups import BatchGroups
from ssimlayer.data.imagefolder import ImageFolderDataModule, ImageFolderSplitsDataModule
from ssimlayer.data.synthetic import SyntheticDataModule

__all__ = [
    "ArrayDataset",
    "BatchGroups",
    "ImageClassificationDataModule",
    "CIFAR10DataModule",
    "DeviceLoader",
    "DeviceSampler",
    "ImageFolderDataModule",
    "ImageFolderSplitsDataModule",
    "SyntheticDataModule",
    "DatasetNotFoundError",
    "find_cifar10",
    "load_cifar10",
    "read_cifar_binary",
    "read_cifar_pickle",
    "verify_cifar10",
]
