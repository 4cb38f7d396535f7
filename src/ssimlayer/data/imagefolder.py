"""``ImageFolder`` datamodules for §3.4.1 (ImageNet images of the CIFAR-10 classes).

The images are randomly resized and cropped to 32x32 and randomly flipped for training, resized to
32x32 for validation. :class:`ImageFolderDataModule` reads one ``root/<class>/<image>`` folder and
holds out a fixed, class-stratified ``val_fraction`` (20 % by default: the paper's 12K / 3K of 15K);
:class:`ImageFolderSplitsDataModule` reads ``root/train/<class>/`` and ``root/val/<class>/`` as they
are (``../shared/data/imagenet_cifar7``: Tiny ImageNet images of 7 CIFAR-10 classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from ssimlayer.data.base import ImageClassificationDataModule, permuted
from ssimlayer.data.cifar10_files import DatasetNotFoundError

__all__ = [
    "ImageFolderDataModule",
    "ImageFolderSplitsDataModule",
    "read_image_folder",
    "stratified_split",
]


def stratified_split(
    targets: list[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` with ``round(val_fraction * n_c)`` of each class held out.

    Examples:
        >>> tr, va = stratified_split([0] * 10 + [1] * 5, 0.2, seed=0)
        >>> len(tr), len(va)
        (12, 3)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    t = torch.as_tensor(targets)
    train, val = [], []
    for c in t.unique().tolist():
        idx = torch.nonzero(t == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = round(val_fraction * len(idx))
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


class ImageFolderDataModule(ImageClassificationDataModule):
    """``root/<class>/<image>`` folders, split once into train/val with a fixed seed.

    Args:
        root: the folder with one sub-folder per class.
        image_size: output size (32: CIFAR-10's).
        val_fraction: share of each class held out for validation.
        split_seed: fixes the split (independent of the training seed).
        batch_size, num_workers, num_classes, pin_memory: see the base class.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 32,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int = 10,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes, pin_memory)
        self.root, self.image_size = Path(root), image_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        self.train_transform = v2.Compose([*_train_ops(image_size), *to_float])
        self.eval_transform = v2.Compose([*_eval_ops(image_size), *to_float])

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        root = self.root.expanduser().resolve()
        try:
            train_view = ImageFolder(str(root), transform=self.train_transform)
        except (FileNotFoundError, RuntimeError) as e:  # missing folder / no images
            raise DatasetNotFoundError(
                f"Image folder dataset not found or empty at {root} ({e}). Set data.root=/path. "
                f"Expected layout: one sub-folder per class holding its images, e.g. "
                f"{root}/airplane/xxx.jpg, {root}/automobile/yyy.jpg, ..."
            ) from e
        if len(train_view.classes) != self.num_classes:
            raise ValueError(
                f"{root} has {len(train_view.classes)} class folders {train_view.classes}, but "
                f"data.num_classes={self.num_classes}"
            )
        eval_view = ImageFolder(str(root), transform=self.eval_transform)
        train_idx, val_idx = stratified_split(
            train_view.targets, self.val_fraction, self.split_seed
        )
        self.train_set = Subset(train_view, train_idx)
        self.train_eval_set = Subset(eval_view, train_idx)
        self.val_set = Subset(eval_view, val_idx)


def _train_ops(image_size: int) -> list:
    """§3.4.1: "randomly resized and cropped to match CIFAR-10 dimensionality ... randomly flipped"."""
    return [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]


def _eval_ops(image_size: int) -> list:
    """Validation: the whole image, shorter side resized, centre crop (the paper is silent)."""
    return [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS
    )


def read_image_folder(folder: str | Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``folder/<class>/<image>`` into ``uint8 (N, 3, H, W)`` RGB images and labels.

    Labels follow the order of ``classes``. Grayscale (or palette, CMYK) images are converted to
    RGB. Every image must have the same size (resizing happens in the transforms, per epoch).

    Raises:
        DatasetNotFoundError: a class folder is missing or holds no image.
        ValueError: an image cannot be read, or its size differs from the first image's.
    """
    folder = Path(folder)
    images, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DatasetNotFoundError(f"class folder {class_dir} is missing")
        files = _image_files(class_dir)
        if not files:
            raise DatasetNotFoundError(
                f"class folder {class_dir} holds no image ({', '.join(sorted(IMG_EXTENSIONS))})"
            )
        for path in files:
            try:
                with Image.open(path) as img:
                    array = np.asarray(img.convert("RGB"))  # (H, W, 3); grayscale JPEGs too
            except (OSError, UnidentifiedImageError, SyntaxError) as e:
                raise ValueError(f"cannot read image {path}: {e}") from e
            if images and array.shape != images[0].shape:
                raise ValueError(
                    f"image {path} is {array.shape[1]}x{array.shape[0]}, but the first image is "
                    f"{images[0].shape[1]}x{images[0].shape[0]}; this reader needs one size"
                )
            images.append(array)
            labels.append(label)
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    return stacked, torch.tensor(labels)


class ImageFolderSplitsDataModule(ImageClassificationDataModule):
    """``root/<train_dir>/<class>/<image>`` and ``root/<val_dir>/<class>/<image>``, read as split.

    Every image is decoded once in :meth:`setup` and held in memory as ``uint8`` (7,700 64x64 images
    of ``imagenet_cifar7``: 95 MB), so an unreadable file stops the run there, naming it, and epochs
    do no JPEG decoding. The random resized crop and flip are drawn per image and epoch as usual.

    Args:
        root: the folder holding the two split folders.
        train_dir, val_dir: their names.
        image_size: output size (32: CIFAR-10's).
        shuffle_seed: the folders are read class by class; both splits are permuted once with this
            seed, so that any prefix (a partial FGSM sweep, ``eval.num_examples``) mixes classes.
        batch_size, num_workers, num_classes, pin_memory: see the base class. Both splits must have
            the same ``num_classes`` class folders (labels: their sorted names, as ImageFolder).

    Raises:
        DatasetNotFoundError: ``root`` or a split folder is missing, a class folder is in one split
            only, or a class folder is empty.
        ValueError: the class count differs from ``num_classes``, or an image cannot be read.
    """

    def __init__(
        self,
        root: str | Path,
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 32,
        shuffle_seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int = 7,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes, pin_memory)
        self.root, self.image_size = Path(root), image_size
        self.train_dir, self.val_dir = train_dir, val_dir
        self.shuffle_seed = shuffle_seed
        # ArrayDataset serves float (C, H, W) images in [0, 1]; the model normalises (CIFAR stats).
        self.train_transform = v2.Compose(_train_ops(image_size))
        self.eval_transform = v2.Compose(_eval_ops(image_size))
        self.classes: list[str] = []

    def _classes(self, root: Path) -> list[str]:
        found = {}
        for split in (self.train_dir, self.val_dir):
            folder = root / split
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"split folder {folder} is missing. Set data.root=/path to a folder holding "
                    f"{self.train_dir}/<class>/<image> and {self.val_dir}/<class>/<image>"
                )
            found[split] = {p.name for p in folder.iterdir() if p.is_dir()}
        train, val = found[self.train_dir], found[self.val_dir]
        for only, here, other in (
            (train - val, self.train_dir, self.val_dir),
            (val - train, self.val_dir, self.train_dir),
        ):
            if only:
                missing = ", ".join(str(root / other / c) for c in sorted(only))
                raise DatasetNotFoundError(
                    f"class folder(s) {missing} missing: {sorted(only)} are in {root / here} only"
                )
        classes = sorted(train)
        if len(classes) != self.num_classes:
            raise ValueError(
                f"{root / self.train_dir} has {len(classes)} class folders {classes}, but "
                f"data.num_classes={self.num_classes}"
            )
        return classes

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        root = self.root.expanduser().resolve()
        self.classes = self._classes(root)
        g = torch.Generator().manual_seed(self.shuffle_seed)
        train = permuted(*read_image_folder(root / self.train_dir, self.classes), g)
        val = permuted(*read_image_folder(root / self.val_dir, self.classes), g)
        self._set_arrays(train, val, self.train_transform, self.eval_transform)
