"""CIFAR-10 readers (binary and pickle) on small files written here, the datamodules, and errors."""

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssimlayer.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    ImageFolderDataModule,
    ImageFolderSplitsDataModule,
    SyntheticDataModule,
    find_cifar10,
    load_cifar10,
    read_cifar_binary,
    read_cifar_pickle,
    verify_cifar10,
)
from ssimlayer.data.cifar10_files import TEST_FILES, TRAIN_FILES
from ssimlayer.data.imagefolder import stratified_split

REAL_CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"
REAL_IMAGENET7 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet_cifar7"


def fake_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def write_binary(folder: Path, n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate(TRAIN_FILES + TEST_FILES):
        images, labels = fake_records(n, i)
        rec = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(n, -1)], axis=1)
        rec.tofile(folder / f"{name}.bin")
        written[name] = (images, labels)
    return written


def write_pickle(folder: Path, n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate(TRAIN_FILES + TEST_FILES):
        images, labels = fake_records(n, 100 + i)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(n, -1), "labels": labels.tolist()}, f)
        written[name] = (images, labels)
    return written


def test_binary_reader_round_trips_records(tmp_path):
    written = write_binary(tmp_path)
    images, labels = read_cifar_binary(tmp_path / "data_batch_3.bin")
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(images.numpy(), written["data_batch_3"][0])
    np.testing.assert_array_equal(labels.numpy(), written["data_batch_3"][1])


def test_pickle_reader_round_trips_records(tmp_path):
    written = write_pickle(tmp_path)
    images, labels = read_cifar_pickle(tmp_path / "test_batch")
    np.testing.assert_array_equal(images.numpy(), written["test_batch"][0])
    np.testing.assert_array_equal(labels.numpy(), written["test_batch"][1])


def test_binary_reader_rejects_a_truncated_file(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(ValueError, match="3073-byte CIFAR-10 records"):
        read_cifar_binary(tmp_path / "bad.bin")


@pytest.mark.parametrize(
    "fmt, sub, writer",
    [
        ("binary", "", write_binary),
        ("binary", "cifar-10-batches-bin", write_binary),
        ("pickle", "cifar-10-batches-py", write_pickle),
    ],
)
def test_find_and_load_both_formats(tmp_path, fmt, sub, writer):
    writer(tmp_path / sub if sub else tmp_path)
    folder, found = find_cifar10(tmp_path)
    assert found == fmt and folder == (tmp_path / sub if sub else tmp_path).resolve()
    data = load_cifar10(folder, found)
    assert data["train"][0].shape == (30, 3, 32, 32) and data["test"][0].shape == (6, 3, 32, 32)


def test_missing_dataset_error_names_folder_key_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        find_cifar10(tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere") in msg
    assert "data.root" in msg
    assert "data_batch_1.bin" in msg and "test_batch" in msg


def test_verify_checks_sizes_and_sha256sums(tmp_path):
    write_binary(tmp_path)
    with pytest.raises(ValueError, match="10,000 records"):
        verify_cifar10(tmp_path, "binary")


def test_verify_catches_a_checksum_mismatch(tmp_path, monkeypatch):
    write_binary(tmp_path)
    monkeypatch.setattr("ssimlayer.data.cifar10_files.RECORDS_PER_FILE", 6)
    good = hashlib.sha256((tmp_path / "test_batch.bin").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{good}  test_batch.bin\n{'0' * 64}  data_batch_2.bin\n")
    with pytest.raises(ValueError, match="data_batch_2.bin: SHA-256 does not match"):
        verify_cifar10(tmp_path, "binary")


def test_cifar10_datamodule_on_small_binary_files(tmp_path):
    written = write_binary(tmp_path)
    dm = CIFAR10DataModule(tmp_path, verify=False, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.val_set) == 6
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    # the un-augmented train view serves exactly the stored pixels
    x0, y0 = dm.train_eval_set[0]
    np.testing.assert_allclose(x0.numpy(), written["data_batch_1"][0][0] / 255.0, atol=1e-6)
    assert y0.item() == written["data_batch_1"][1][0]
    # validation is the test split, permuted once (the shared copy is sorted by class)
    assert sorted(dm.val_set.labels.tolist()) == sorted(written["test_batch"][1].tolist())


def test_train_batches_selects_files_and_needs_only_those(tmp_path):
    written = write_binary(tmp_path)
    for name in ("data_batch_2", "data_batch_4", "data_batch_5"):
        (tmp_path / f"{name}.bin").unlink()  # a partial copy: batches 1 and 3 and the test batch
    with pytest.raises(DatasetNotFoundError):
        find_cifar10(tmp_path)  # all five are asked for by default
    dm = CIFAR10DataModule(tmp_path, verify=False, train_batches=[3, 1], batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 12 and len(dm.val_set) == 6
    expected = np.concatenate([written["data_batch_3"][1], written["data_batch_1"][1]])
    assert dm.train_eval_set.labels.tolist() == expected.tolist()
    with pytest.raises(ValueError, match=r"from 1 to 5, got \[0, 6\]"):
        find_cifar10(tmp_path, [0, 6])


def test_cifar10_datamodule_missing_root_raises_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        CIFAR10DataModule(tmp_path / "absent").prepare_data()


def test_synthetic_datamodule_shapes_and_determinism():
    a, b = (
        SyntheticDataModule(num_train=20, num_val=10),
        SyntheticDataModule(num_train=20, num_val=10),
    )
    a.setup(), b.setup()
    assert torch.equal(a.val_set.images, b.val_set.images)
    x, y = a.eval_dataloader("val").dataset[0]
    assert x.shape == (3, 32, 32) and 0 <= y.item() < 10


def test_stratified_split_is_fixed_and_disjoint():
    targets = [c for c in range(3) for _ in range(10)]
    tr, va = stratified_split(targets, 0.2, seed=0)
    assert (tr, va) == stratified_split(targets, 0.2, seed=0)
    assert not set(tr) & set(va) and len(va) == 6
    assert sorted(targets[i] for i in va) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_datamodule(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(10):
        (tmp_path / f"class{c}").mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                tmp_path / f"class{c}" / f"{i}.png"
            )
    dm = ImageFolderDataModule(tmp_path, batch_size=8)
    dm.setup("fit")
    assert len(dm.train_set) == 40 and len(dm.val_set) == 10
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert dm.eval_dataloader("train").dataset[0][0].shape == (3, 32, 32)


def test_imagefolder_missing_root_raises_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        ImageFolderDataModule(tmp_path / "absent").setup()


def write_splits(root: Path, classes=("cat", "dog", "ship"), n=(4, 2), size=64) -> Path:
    """root/train/<class>/ and root/val/<class>/ with n small images each; the first is grayscale."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), n):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                shape = (size, size) if i == 0 else (size, size, 3)
                img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
                img.save(root / split / c / f"{c}_{i}.{'JPEG' if i % 2 else 'png'}")
    return root


def test_imagefolder_splits_reads_both_folders_as_split(tmp_path):
    dm = ImageFolderSplitsDataModule(write_splits(tmp_path), batch_size=4, num_classes=3)
    dm.setup("fit")
    assert dm.classes == ["cat", "dog", "ship"]
    assert len(dm.train_set) == 12 and len(dm.val_set) == 6 and len(dm.train_eval_set) == 12
    assert sorted(dm.train_set.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert dm.train_set.labels.tolist() != sorted(dm.train_set.labels.tolist())  # permuted once
    assert dm.train_set.images.shape == (12, 3, 64, 64)  # grayscale files became RGB
    gray = next(x for x in dm.val_set.images if torch.equal(x[0], x[1]))
    assert torch.equal(gray[1], gray[2])
    again = ImageFolderSplitsDataModule(tmp_path, num_classes=3)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images)  # the same order every time
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.min() >= 0 and x.max() <= 1 and y.dtype == torch.long
    for split in ("train", "val"):
        x, _ = dm.eval_dataloader(split).dataset[0]
        assert x.shape == (3, 32, 32)


def test_imagefolder_splits_validation_resize_is_deterministic(tmp_path):
    dm = ImageFolderSplitsDataModule(write_splits(tmp_path), num_classes=3)
    dm.setup()
    assert torch.equal(dm.val_set[1][0], dm.val_set[1][0])
    # a 64x64 image resized to 32x32 keeps its mean (antialiased down-sampling)
    full = dm.val_set.images[1].float().mean() / 255
    assert abs(dm.val_set[1][0].mean().item() - full.item()) < 0.02


def test_imagefolder_splits_missing_split_folder_names_it(tmp_path):
    write_splits(tmp_path)
    for f in (tmp_path / "val").rglob("*.*"):
        f.unlink()
    for d in sorted((tmp_path / "val").iterdir()):
        d.rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(DatasetNotFoundError, match=f"split folder {tmp_path / 'val'} is missing"):
        ImageFolderSplitsDataModule(tmp_path, num_classes=3).setup()


def test_imagefolder_splits_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="absent/train is missing.*data.root"):
        ImageFolderSplitsDataModule(tmp_path / "absent").setup()


def test_imagefolder_splits_class_in_one_split_only_names_the_folder(tmp_path):
    write_splits(tmp_path)
    (tmp_path / "train" / "frog").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "train" / "frog" / "a.png")
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'val' / 'frog'} missing"):
        ImageFolderSplitsDataModule(tmp_path, num_classes=4).setup()


def test_imagefolder_splits_empty_class_names_the_folder(tmp_path):
    write_splits(tmp_path)
    for f in (tmp_path / "val" / "dog").iterdir():
        f.unlink()
    (tmp_path / "val" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'val' / 'dog'} holds no image"):
        ImageFolderSplitsDataModule(tmp_path, num_classes=3).setup()


def test_imagefolder_splits_unreadable_image_names_the_file(tmp_path):
    write_splits(tmp_path)
    bad = tmp_path / "train" / "ship" / "ship_3.JPEG"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        ImageFolderSplitsDataModule(tmp_path, num_classes=3).setup()


def test_imagefolder_splits_wrong_class_count(tmp_path):
    with pytest.raises(ValueError, match="3 class folders.*data.num_classes=7"):
        ImageFolderSplitsDataModule(write_splits(tmp_path), num_classes=7).setup()


def test_imagefolder_splits_mixed_sizes_name_the_file(tmp_path):
    write_splits(tmp_path)
    odd = tmp_path / "val" / "cat" / "cat_9.png"
    Image.new("RGB", (48, 64)).save(odd)
    with pytest.raises(ValueError, match=f"image {odd} is 48x64"):
        ImageFolderSplitsDataModule(tmp_path, num_classes=3).setup()


@pytest.mark.data
@pytest.mark.skipif(
    not (REAL_IMAGENET7 / "classes.txt").exists(),
    reason="imagenet_cifar7 not in ../shared/data/imagenet_cifar7",
)
def test_real_imagenet_cifar7():
    dm = ImageFolderSplitsDataModule(REAL_IMAGENET7)
    dm.setup()
    assert dm.classes == (REAL_IMAGENET7 / "classes.txt").read_text().split()
    assert dm.train_set.images.shape == (6160, 3, 64, 64)
    assert dm.val_set.images.shape == (1540, 3, 64, 64)
    assert torch.bincount(dm.train_set.labels).tolist() == [880] * 7
    assert torch.bincount(dm.val_set.labels).tolist() == [220] * 7
    x, _ = dm.train_set[0]
    assert x.shape == (3, 32, 32)


@pytest.mark.data
@pytest.mark.skipif(
    not (REAL_CIFAR / "test_batch.bin").exists(),
    reason="real CIFAR-10 not in ../shared/data/cifar10",
)
def test_real_cifar10_binary_copy():
    folder, fmt = find_cifar10(REAL_CIFAR)
    assert fmt == "binary"
    verify_cifar10(folder, fmt)
    images, labels = read_cifar_binary(folder / "data_batch_1.bin")
    assert images.shape == (10_000, 3, 32, 32)
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # the official order
    counts = torch.bincount(labels, minlength=10).tolist()
    assert counts == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]


def test_resumable_loader_ranks_partition_each_epoch():
    from torch.utils.data import DistributedSampler, TensorDataset

    from ssimlayer.data.resumable import ResumableLoader

    ds = TensorDataset(torch.arange(10))
    shards = [
        torch.cat([b[0] for b in ResumableLoader(ds, 2, seed=1, rank=r, world_size=3)])
        for r in range(3)
    ]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping, as DistributedSampler
    assert set(torch.cat(shards).tolist()) == set(range(10))
    single = torch.cat([b[0] for b in ResumableLoader(ds, 2, seed=1)])
    # rank r takes positions r, r + 3, ... of the one-process order
    assert [int(shards[p % 3][p // 3]) for p in range(10)] == single.tolist()
    # Lightning keeps a DistributedSampler under DDP instead of replacing it
    assert isinstance(ResumableLoader(ds, 2, rank=1, world_size=2).sampler, DistributedSampler)


def test_resumable_items_are_drawn_as_under_torch_manual_seed():
    # Each sample is augmented with only the CPU generator seeded (no CUDA/MTIA/XPU reseed): the
    # same draws as torch.manual_seed(item_seed) gave, and the caller's random stream is untouched.
    from torchvision.transforms import v2

    from ssimlayer.data import ArrayDataset
    from ssimlayer.data.resumable import _SeededItems

    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    flipped = ArrayDataset(images, torch.arange(8), v2.RandomHorizontalFlip())
    items = _SeededItems(flipped)
    before = torch.get_rng_state()
    for seed in range(20):
        got = items[(seed % 8, seed)][0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            want = flipped[seed % 8][0]
        assert torch.equal(got, want), seed
    assert torch.equal(torch.get_rng_state(), before)
