"""Readers for the two official CIFAR-10 formats, with location and integrity checks.

- Binary version (``cifar-10-batches-bin``): ``data_batch_{1..5}.bin``, ``test_batch.bin``; each record is
  1 label byte then 3072 pixel bytes (R, G, B planes of 32x32, row-major).
- Python version (``cifar-10-batches-py``): pickles ``data_batch_{1..5}``, ``test_batch`` holding
  ``data`` (N x 3072 uint8, same plane order) and ``labels``. They are read by an unpickler that
  builds only that dict (numpy arrays, bytes, lists, ints), so a crafted file cannot run code.
"""

from __future__ import annotations

import codecs
import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ALL_TRAIN_BATCHES",
    "DatasetNotFoundError",
    "find_cifar10",
    "read_cifar_binary",
    "read_cifar_pickle",
    "load_cifar10",
    "verify_cifar10",
    "EXPECTED_LAYOUT",
]

RECORD_BYTES = 1 + 3 * 32 * 32
RECORDS_PER_FILE = 10_000
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
SUBFOLDERS = {"binary": "cifar-10-batches-bin", "pickle": "cifar-10-batches-py"}

EXPECTED_LAYOUT = (
    "either the binary version (data_batch_1.bin ... data_batch_5.bin and test_batch.bin) or the "
    "python version (pickles data_batch_1 ... data_batch_5 and test_batch), directly in the folder "
    "or in its cifar-10-batches-bin/ or cifar-10-batches-py/ subfolder"
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder is missing or incomplete; the message says where and how to fix it."""


ALL_TRAIN_BATCHES = (1, 2, 3, 4, 5)


def _files(fmt: str, train_batches: Sequence[int] = ALL_TRAIN_BATCHES) -> list[str]:
    """The file names of the training batches ``train_batches``, then of the test batch."""
    if any(b not in ALL_TRAIN_BATCHES for b in train_batches) or not train_batches:
        raise ValueError(
            f"data.train_batches must list training batch numbers from 1 to 5, got "
            f"{list(train_batches)}"
        )
    suffix = ".bin" if fmt == "binary" else ""
    return [name + suffix for name in [TRAIN_FILES[b - 1] for b in train_batches] + TEST_FILES]


def find_cifar10(
    root: str | Path, train_batches: Sequence[int] = ALL_TRAIN_BATCHES
) -> tuple[Path, str]:
    """Return ``(folder, format)`` of a CIFAR-10 copy under ``root`` holding the test batch and the
    training batches ``train_batches`` (all five by default).

    ``format`` is ``"binary"`` or ``"pickle"``. Raises :class:`DatasetNotFoundError` naming the
    folders searched, the config key and the expected layout.
    """
    root = Path(root).expanduser().resolve()
    searched = [root, root / SUBFOLDERS["binary"], root / SUBFOLDERS["pickle"]]
    for folder in searched:
        for fmt in ("binary", "pickle"):
            if all((folder / f).is_file() for f in _files(fmt, train_batches)):
                return folder, fmt
    raise DatasetNotFoundError(
        f"CIFAR-10 not found: searched {', '.join(str(s) for s in searched)}. "
        f"Set data.root=/path/to/cifar10 (or the SSIMLAYER_DATA environment variable), or "
        f"data.download=true to let torchvision fetch it. Expected layout: {EXPECTED_LAYOUT}."
    )


def read_cifar_binary(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one binary batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 "
            f"records; the file is truncated or corrupted. Re-copy it from the official "
            f"cifar-10-binary.tar.gz (or point data.root at another copy)"
        )
    if (top := int(raw[::RECORD_BYTES].max())) > 9:
        raise ValueError(
            f"{path}: a record has label {top} (CIFAR-10 labels are 0-9); "
            f"the file is corrupted or not CIFAR-10. Re-copy it from the official "
            f"cifar-10-binary.tar.gz (or point data.root at another copy)"
        )
    raw = raw.reshape(-1, RECORD_BYTES)
    labels = torch.from_numpy(raw[:, 0].astype(np.int64))
    images = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, labels


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes at pickle protocol < 3 as _codecs.encode(text, "latin1")
    if encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


_ARRAY = np.zeros(1, np.uint8)
#: The globals a CIFAR-10 batch refers to: numpy's array and dtype rebuilders (under numpy 1's and
#: numpy 2's module names; ``_frombuffer`` at protocol 5) and the bytes of protocol 2.
_CIFAR_GLOBALS = {
    **{
        (m, "_reconstruct"): _ARRAY.__reduce__()[0]
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{
        (m, "_frombuffer"): _ARRAY.__reduce_ex__(5)[0]
        for m in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only :data:`_CIFAR_GLOBALS`: no other class or function is imported or called."""

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def read_cifar_pickle(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one python-version batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Raises:
        ValueError: the file is damaged, not a CIFAR-10 batch, or refers to any class or function
            beyond numpy's array rebuilders (named in the message; it was not called).
    """
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as e:
        raise ValueError(
            f"{path}: refused to unpickle {e}: a CIFAR-10 python batch holds only a dict of numpy "
            f"arrays, bytes, lists and ints, so this file is not the official one (or was crafted "
            f"to run code); nothing in it has run. Re-download the official "
            f"cifar-10-python.tar.gz (or point data.root at another copy)"
        ) from None
    except Exception as e:  # noqa: BLE001 -- a damaged pickle fails in many ways (even MemoryError)
        raise ValueError(
            f"{path}: cannot be unpickled ({type(e).__name__}: {e}); the file is truncated or "
            f"corrupted. Re-download the official cifar-10-python.tar.gz (or point data.root at "
            f"another copy)"
        ) from e
    entry = entry if isinstance(entry, dict) else {}
    data = np.asarray(entry["data"], dtype=np.uint8) if "data" in entry else None
    labels = entry.get("labels", entry.get("fine_labels"))
    if data is None or labels is None or data.ndim != 2 or data.shape[1] != RECORD_BYTES - 1:
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch (need 'data' N x 3072 and "
            f"'labels'); re-download the official cifar-10-python.tar.gz"
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.tensor(labels)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_cifar10(
    folder: str | Path, fmt: str, train_batches: Sequence[int] = ALL_TRAIN_BATCHES
) -> None:
    """Check sizes and checksums; ``ValueError`` naming the first bad file.

    Binary: every file holds exactly 10,000 records, and matches ``SHA256SUMS`` when the folder has
    one. Python version: torchvision's published MD5 sums of the official pickles.
    """
    folder = Path(folder)
    files = _files(fmt, train_batches)
    if fmt == "binary":
        for name in files:
            size = (folder / name).stat().st_size
            if size != RECORD_BYTES * RECORDS_PER_FILE:
                raise ValueError(
                    f"{folder / name}: {size} bytes, expected {RECORD_BYTES * RECORDS_PER_FILE} "
                    f"(10,000 records); the copy is truncated or not CIFAR-10 (data.verify=false "
                    f"skips this check)"
                )
        sums = folder / "SHA256SUMS"
        if sums.is_file():
            for line in sums.read_text().splitlines():
                if not line.strip():
                    continue
                digest, name = line.split(maxsplit=1)
                name = name.lstrip("*")
                if name in files and _sha256(folder / name) != digest:
                    raise ValueError(
                        f"{folder / name}: SHA-256 does not match {sums}; re-copy the file "
                        f"(data.verify=false skips this check)"
                    )
    elif fmt == "pickle":
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import check_integrity

        for name, md5 in CIFAR10.train_list + CIFAR10.test_list:
            if name in files and not check_integrity(str(folder / name), md5):
                raise ValueError(
                    f"{folder / name}: MD5 differs from the official CIFAR-10 python version; "
                    f"re-download it (data.verify=false skips this check)"
                )
    else:
        raise ValueError(f"unknown CIFAR-10 format {fmt!r}; expected 'binary' or 'pickle'")


def load_cifar10(
    folder: str | Path, fmt: str, train_batches: Sequence[int] = ALL_TRAIN_BATCHES
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train": (images, labels), "test": (images, labels)}`` from a folder found by
    :func:`find_cifar10`; the training split concatenates ``train_batches`` in that order."""
    read = read_cifar_binary if fmt == "binary" else read_cifar_pickle
    *train, test = [read(Path(folder) / name) for name in _files(fmt, train_batches)]
    images, labels = zip(*train)
    return {"train": (torch.cat(images), torch.cat(labels)), "test": test}
