"""DeviceLoader: same batches (shapes, dtypes, range, coverage, flip rate) as the normal loader."""

from __future__ import annotations

import pytest
import torch

from ssimlayer.data import DeviceLoader, DeviceSampler, SyntheticDataModule


def _dm(**kw) -> SyntheticDataModule:
    dm = SyntheticDataModule(num_train=200, num_val=70, batch_size=32, **kw)
    dm.setup()
    return dm


def test_batches_match_normal_loader_format():
    dm, dm_dev = _dm(), _dm(device_resident=True)
    normal, dev = dm.train_dataloader(), dm_dev.train_dataloader()
    assert isinstance(dev, DeviceLoader)
    assert len(dev) == len(normal) == 7  # 200 / 32, last batch kept as DataLoader does
    for (x, y), (xd, yd) in zip(normal, dev, strict=True):
        assert xd.shape == x.shape and yd.shape == y.shape
        assert xd.dtype == x.dtype == torch.float32 and yd.dtype == y.dtype == torch.int64
        assert 0 <= xd.min() and xd.max() <= 1


def test_every_sample_once_per_epoch_and_new_order_each_epoch():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2)
    loader = DeviceLoader(
        images.contiguous(), torch.arange(100), 16, sampler=DeviceSampler(100, seed=3)
    )
    orders = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        labels = torch.cat([y for _, y in loader])
        assert sorted(labels.tolist()) == list(range(100))
        orders.append(labels)
    assert not torch.equal(orders[0], orders[1])
    loader.sampler.set_epoch(0)  # the same epoch gives the same order: resumable
    assert torch.equal(torch.cat([y for _, y in loader]), orders[0])


def test_images_follow_their_labels():
    dm = _dm(device_resident=True, flip=False)
    x, y = next(iter(dm.train_dataloader()))
    ref = dm.train_eval_set.images.float() / 255
    idx = [next(i for i in range(len(ref)) if torch.equal(ref[i], xi)) for xi in x[:4]]
    assert dm.train_eval_set.labels[idx].tolist() == y[:4].tolist()


def test_flip_rate_is_one_half():
    # Left half 0, right half 255: a flipped image has its bright half on the left.
    img = torch.zeros(4000, 1, 2, 2, dtype=torch.uint8)
    img[..., 1] = 255
    loader = DeviceLoader(img, torch.zeros(4000), 500, flip=0.5)
    x = torch.cat([xb for xb, _ in loader])
    rate = (x[:, 0, 0, 0] == 1).float().mean().item()
    assert abs(rate - 0.5) < 0.04  # 4000 draws: std 0.008
    assert ((x[:, 0, 0, 0] + x[:, 0, 0, 1]) == 1).all()  # each image flipped or not, never mixed


def test_val_loader_is_unshuffled_and_unflipped():
    dm, dm_dev = _dm(), _dm(device_resident=True)
    x = torch.cat([b[0] for b in dm.val_dataloader()])
    xd = torch.cat([b[0] for b in dm_dev.val_dataloader()])
    assert torch.equal(x, xd)


def test_drop_last():
    loader = DeviceLoader(
        torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.zeros(10), 4, drop_last=True
    )
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]


def test_ranks_partition_the_epoch():
    seen = []
    for rank in range(3):
        s = DeviceSampler(10, seed=0, rank=rank, world_size=3)
        assert len(s) == 4
        seen += s.indices(torch.device("cpu")).tolist()
    assert set(seen) == set(range(10)) and len(seen) == 12  # padded by wrapping, as Lightning


def test_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(torch.zeros(2, 1, 2, 2), torch.zeros(2), 1)


def test_state_dict_continues_the_interrupted_epoch_exactly():
    dm = _dm(device_resident=True)
    a = dm.train_dataloader()
    a.sampler.set_epoch(2)
    it = iter(a)
    seen = [next(it) for _ in range(3)]
    state = a.state_dict()
    rest = list(it)
    b = _dm(device_resident=True).train_dataloader()
    b.load_state_dict(state)
    again = list(b)  # the same 4 remaining batches, flips included
    assert state == {"epoch": 2, "batches_consumed": 3} and len(seen) + len(again) == 7
    pairs = zip(rest, again, strict=True)
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in pairs)
    b.sampler.set_epoch(3)  # the skip applies only to the interrupted epoch
    assert len(list(b)) == 7
