"""The paper-protocol resume archive (experiments/paper/archive.py) refuses what it cannot resume."""

import os

import pytest

from experiments.paper import archive
from experiments.paper.archive import ArchiveError

CONFIG = "profile=smoke seeds=[0,1,2]"


@pytest.fixture
def repo(tmp_path):
    """A stand-in repository: the code hash covers its src/, conf/ and experiments/paper/."""
    root = tmp_path / "repo"
    for name in ("src/a.py", "conf/b.yaml", "experiments/paper/c.sh"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    return root


@pytest.fixture
def state(tmp_path):
    folder = tmp_path / "state"
    (folder / "table1" / "fig4_ssim_pack" / "checkpoints").mkdir(parents=True)
    (folder / "table1" / "fig4_ssim_pack" / "checkpoints" / "last.ckpt").write_bytes(b"w" * 5000)
    (folder / "table1" / "fig4_ssim_pack" / "checkpoints" / ".last.ckpt.partial").write_bytes(b"x")
    (folder / "table1" / "fig4_ssim_pack" / "epochs.csv").write_text("epoch\n1\n")
    return folder


@pytest.fixture
def written(tmp_path, repo, state):
    out = tmp_path / "out"
    archive.write(state, out, CONFIG, sequence=4, root=repo)
    return out


def test_write_then_restore_round_trip(tmp_path, repo, written):
    files = sorted(p.name for p in written.iterdir())
    assert files == ["manifest.json", "state.tar.xz.00"]
    target = tmp_path / "restored"
    manifest = archive.restore(written, target, CONFIG, root=repo)
    assert manifest["sequence"] == 4
    assert (target / "table1/fig4_ssim_pack/epochs.csv").read_text() == "epoch\n1\n"
    assert not (target / "table1/fig4_ssim_pack/checkpoints/.last.ckpt.partial").exists()


def test_large_state_is_split_into_parts_within_the_limits(tmp_path, repo, state, monkeypatch):
    monkeypatch.setattr(archive, "MAX_PART", 1000)
    (state / "noise.bin").write_bytes(os.urandom(4500))
    out = tmp_path / "out"
    archive.write(state, out, CONFIG, root=repo)
    parts = sorted(out.glob("state.tar.xz.*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 1000 for p in parts)
    archive.restore(out, tmp_path / "restored", CONFIG, root=repo)
    (state / "more.bin").write_bytes(os.urandom(9000))
    with pytest.raises(ArchiveError, match="over the 8 files"):
        archive.write(state, out, CONFIG, root=repo)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a, r: (a / "manifest.json").unlink(), "missing manifest.json"),
        (lambda a, r: (a / "state.tar.xz.00").unlink(), "missing state.tar.xz.00"),
        (
            lambda a, r: (a / "state.tar.xz.00").write_bytes(
                (a / "state.tar.xz.00").read_bytes()[:-9]
            ),
            "state.tar.xz.00 is truncated or corrupted",
        ),
        (
            lambda a, r: (a / "manifest.json").write_text((a / "manifest.json").read_text()[:40]),
            "manifest.json is truncated or corrupted",
        ),
        (lambda a, r: (r / "src/a.py").write_text("changed"), "made by other code"),
    ],
    ids=["manifest-missing", "part-missing", "part-truncated", "manifest-truncated", "other-code"],
)
def test_a_damaged_or_foreign_archive_is_refused_before_the_state_changes(
    tmp_path, repo, written, damage, message
):
    target = tmp_path / "kept"
    target.mkdir()
    (target / "mine.txt").write_text("untouched")
    damage(written, repo)
    with pytest.raises(ArchiveError, match=message):
        archive.restore(written, target, CONFIG, root=repo)
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert archive.main(["check", "--archive", str(written), "--config", CONFIG]) == 2


def test_an_archive_of_another_config_is_refused_naming_both(repo, written):
    with pytest.raises(ArchiveError, match="another config") as err:
        archive.check(written, "profile=paper seeds=[0,1,2]", root=repo)
    assert "profile=smoke" in str(err.value) and "profile=paper" in str(err.value)


def test_install_and_cache_files_do_not_change_the_code_hash(repo, written):
    # pip install -e leaves src/<pkg>.egg-info here but not on the GPU machine (issue 30, window 1)
    (repo / "src/ssimlayer.egg-info").mkdir()
    (repo / "src/ssimlayer.egg-info/PKG-INFO").write_text("Name: ssimlayer")
    (repo / "src/__pycache__").mkdir()
    (repo / "src/__pycache__/a.cpython-311.pyc").write_bytes(b"\0")
    assert archive.check(written, CONFIG, root=repo)["sequence"] == 4
    (repo / "src/a.py").write_text("changed")
    with pytest.raises(ArchiveError, match="other code"):
        archive.check(written, CONFIG, root=repo)


def test_a_snapshot_records_its_commit_and_a_whole_archive_reads_under_any_code(repo, written):
    (repo / "COMMIT").write_text("0123abcd\n")
    assert archive.git_commit(repo) == "0123abcd"
    (repo / "src/a.py").write_text("changed")
    assert archive.whole(written)["sequence"] == 4  # progress.py reads it; resuming would refuse
