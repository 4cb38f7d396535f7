"""Files from someone else cannot run code: checkpoints load weights-only, CIFAR-10 pickles through
an unpickler that builds only numpy arrays, bytes, lists and ints (issue #25).

Each crafted file, loaded without the safeguard, writes a marker file; the control test shows that
it does, and every other test checks that the marker never appears.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

import ssimlayer.train
from ssimlayer.data.cifar10_files import read_cifar_pickle
from ssimlayer.lightning import FGSMSweep
from ssimlayer.lightning.checkpointing import (
    UnsafeCheckpointError,
    check_checkpoint_matches,
    load_checkpoint,
)
from ssimlayer.train import train
from ssimlayer.utils.runs import Run
from tests.test_reliability import TINY, compose_cfg, stable


class WritesMarker:
    """Unpickled without restriction, ``exec``s code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    state = {"state_dict": {"net.0.weight": torch.zeros(2)}, "payload": WritesMarker(marker)}
    torch.save(state, path)
    return path


def crafted_cifar_batch(path: Path, marker: Path) -> Path:
    images = np.zeros((2, 3072), dtype=np.uint8)
    entry = {"data": images, "labels": [0, 1], "payload": WritesMarker(marker)}
    path.write_bytes(pickle.dumps(entry))
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "marker"


def test_the_crafted_files_do_run_code_when_loaded_unrestricted(tmp_path, marker):
    torch.load(crafted_checkpoint(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(crafted_cifar_batch(tmp_path / "data_batch_1", marker).read_bytes())
    assert marker.exists()


def test_load_checkpoint_refuses_a_crafted_file_naming_it_and_the_type(tmp_path, marker):
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refused to load the type exec"):
        load_checkpoint(path)
    assert not marker.exists()


def test_check_checkpoint_matches_refuses_a_crafted_file(tmp_path, marker):
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="nothing in the file has run"):
        check_checkpoint_matches(path, torch.nn.Linear(1, 1), {"name": "m"})
    assert not marker.exists()


def test_fgsm_sweep_refuses_a_crafted_best_checkpoint(tmp_path, marker):
    path = crafted_checkpoint(tmp_path / "best.ckpt", marker)
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_path=str(path)))
    module = torch.nn.Linear(1, 1)
    module.device = torch.device("cpu")  # what _model reads of a LightningModule
    sweep = FGSMSweep(str(tmp_path), eps=[0.0], weights="best")
    with pytest.raises(UnsafeCheckpointError, match="best.ckpt"):
        sweep._model(trainer, module)
    assert not marker.exists()


def test_train_refuses_a_crafted_ckpt_path(tmp_path, marker):
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        train(compose_cfg(tmp_path / "run", *TINY, f"ckpt_path={path}"))
    assert not marker.exists()


def test_lightning_resume_itself_loads_weights_only(tmp_path, marker, monkeypatch):
    # Without our check in front, Trainer.fit(ckpt_path=...) meets the file: still refused.
    monkeypatch.setattr(ssimlayer.train, "check_checkpoint_matches", lambda *a: None)
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError, match="exec"):
        train(compose_cfg(tmp_path / "run", *TINY, f"ckpt_path={path}"))
    assert not marker.exists()


def test_read_cifar_pickle_refuses_a_crafted_batch(tmp_path, marker):
    path = crafted_cifar_batch(tmp_path / "data_batch_1", marker)
    with pytest.raises(ValueError, match=r"data_batch_1: refused to unpickle builtins\.exec"):
        read_cifar_pickle(path)
    assert not marker.exists()


def test_read_cifar_pickle_refuses_other_codecs(tmp_path):
    # Protocol 2 writes bytes as _codecs.encode(text, "latin1"); no other codec is looked up.
    payload = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    path = tmp_path / "test_batch"
    path.write_bytes(payload)
    with pytest.raises(
        ValueError, match="refused to unpickle _codecs.encode with encoding 'rot13'"
    ):
        read_cifar_pickle(path)


@pytest.mark.parametrize(
    ("protocol", "numpy_module"),
    [(2, "numpy.core.multiarray"), (2, "numpy._core.multiarray"), (4, None), (5, None)],
)
def test_read_cifar_pickle_reads_every_protocol_and_numpy_module_name(
    tmp_path, protocol, numpy_module
):
    # The official files are Python 2 pickles naming numpy.core.multiarray (numpy 1's module);
    # files written today name numpy._core; protocol 2 stores bytes through _codecs.encode.
    rng = np.random.default_rng(protocol)
    images = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    entry = {"batch_label": b"testing batch 1 of 1", "labels": [3, 1, 4], "data": images}
    entry["filenames"] = [b"a.png", b"b.png", b"c.png"]
    raw = pickle.dumps(entry, protocol=protocol)
    if numpy_module:  # protocol 2's GLOBAL opcodes are text lines: the module name can be swapped
        assert b"numpy._core.multiarray\n_reconstruct" in raw
        raw = raw.replace(b"numpy._core.multiarray\n", f"{numpy_module}\n".encode())
    (tmp_path / "test_batch").write_bytes(raw)
    got_images, got_labels = read_cifar_pickle(tmp_path / "test_batch")
    assert torch.equal(got_images, torch.from_numpy(images.reshape(3, 3, 32, 32)))
    assert got_labels.tolist() == [3, 1, 4]


def test_a_normal_checkpoint_resumes_and_evaluates_identically(tmp_path):
    # A run crashed mid-epoch 1 and resumed from its last.ckpt ends as an uninterrupted one, with
    # every load (ours and Lightning's resume) weights-only.
    crash = (
        "+callbacks.crash._target_=tests.test_reliability.CrashAtStep",
        "+callbacks.crash.step=13",
    )
    with pytest.raises(RuntimeError, match="crash at step 13"):
        train(compose_cfg(tmp_path / "crashed", *TINY, *crash))
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt)["global_step"] == 12
    resumed = train(compose_cfg(tmp_path / "resumed", *TINY, f"ckpt_path={ckpt}"))
    reference = train(compose_cfg(tmp_path / "reference", *TINY))
    assert reference["global_step"] == 16 and stable(resumed) == stable(reference)

    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = []
    for name in ("reference", "resumed"):
        run = Run(tmp_path / name)  # make robustness / make prune load through Run.load_model
        with torch.no_grad():
            logits.append(run.load_model()(x))
    assert torch.equal(logits[0], logits[1])
    # the same run dir with a crafted checkpoint in place of its own
    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "reference" / "checkpoints" / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        Run(tmp_path / "reference", ckpt=evil).load_model()
    assert not marker.exists()


def test_every_checkpoint_a_run_writes_needs_no_allowlisted_type(tmp_path):
    # Mid-epoch, epoch-end and best checkpoints, with an LR scheduler's state: torch's default
    # weights-only types suffice, so SAFE_GLOBALS stays empty.
    scheduled = (
        "+model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
        "+model.scheduler._partial_=true",
        "+model.scheduler.step_size=1",
    )
    train(compose_cfg(tmp_path / "run", *TINY, *scheduled))
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) >= 2
    for path in ckpts:
        assert get_unsafe_globals_in_checkpoint(path) == [], path
        assert load_checkpoint(path)["lr_schedulers"], path
