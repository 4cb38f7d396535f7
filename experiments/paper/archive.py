"""The resume archive of the paper-protocol runs: at most 8 files of at most 16 MiB, checked first.

    python experiments/paper/archive.py write   --state DIR --out DIR --config STR [--sequence N]
    python experiments/paper/archive.py check   --archive DIR --config STR
    python experiments/paper/archive.py restore --archive DIR --state DIR --config STR

``write`` packs the state folder (the pack dirs: checkpoints, metrics, curves, FGSM sweeps, filter
grids) into ``state.tar.xz.00``, ``.01``, ... and ``manifest.json`` (each part's size and SHA-256,
the config string's hash, the code's hash, a sequence number). ``check`` refuses, naming the
problem, an archive whose manifest or a part is missing, whose part is truncated or corrupted, or
that was made by another config or other code; ``restore`` checks first, extracts into a new
folder beside the state folder and only then swaps it in, so a refused or broken archive leaves the
state as it was.

The code hash covers ``src/``, ``conf/`` and ``experiments/paper/`` (file names and contents),
so it works where the repository travels without ``.git`` (the GPU machine), ignores commits that
only add results elsewhere, and sees uncommitted changes. The git commit is recorded beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"
PART = "state.tar.xz.{:02d}"
MAX_FILES = 8  # what one device command brings back
MAX_PART = 16 * 1024 * 1024  # bytes per file brought back
CODE_DIRS = ("src", "conf", "experiments/paper")


class ArchiveError(RuntimeError):
    """The archive cannot be used; the message says which check failed and what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_hash(root: Path = ROOT) -> str:
    """SHA-256 over the names and contents of the code files (no caches, no results)."""
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for path in sorted((root / d).rglob("*")):
            skip = any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)
            if skip or not path.is_file() or path.suffix == ".pyc":  # pip's and Python's
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def git_commit(root: Path = ROOT) -> str | None:
    """The commit of the code: ``COMMIT`` in a snapshot (``gpu_run.sh snapshot``), else git's HEAD
    (on the GPU machine git's metadata can be older than the tree that travelled)."""
    if (root / "COMMIT").is_file():
        return (root / "COMMIT").read_text().strip()
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def write(state: Path, out: Path, config: str, sequence: int = 0, root: Path = ROOT) -> dict:
    """Pack ``state`` into ``out``; return the manifest. Refuses to go over the file limits."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", preset=6) as tar:
        tar.add(state, arcname="state", filter=_skip_partial)
    data = buf.getvalue()
    parts = [data[i : i + MAX_PART] for i in range(0, len(data), MAX_PART)] or [b""]
    if len(parts) + 1 > MAX_FILES:
        raise ArchiveError(
            f"the state packs into {len(data)} bytes, {len(parts)} parts of {MAX_PART} bytes plus "
            f"the manifest: over the {MAX_FILES} files one command brings back"
        )
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("state.tar.xz.*"):
        old.unlink()
    files = {}
    for i, part in enumerate(parts):
        (out / PART.format(i)).write_bytes(part)
        files[PART.format(i)] = {"bytes": len(part), "sha256": _sha256(part)}
    manifest = {
        "config_sha256": _sha256(config.encode()),
        "config": config,
        "code_sha256": code_hash(root),
        "commit": git_commit(root),
        "sequence": sequence,
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _skip_partial(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # a checkpoint being written when the window closed: the previous complete one is kept
    return None if info.name.endswith(".partial") else info


def whole(archive: Path) -> dict:
    """The archive's manifest, if its manifest and every part are there, intact."""
    path = archive / MANIFEST
    if not path.is_file():
        raise ArchiveError(f"resume archive {archive}: missing {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise ArchiveError(
            f"resume archive {archive}: {MANIFEST} is truncated or corrupted ({e})"
        ) from e
    missing = [name for name in files if not (archive / name).is_file()]
    if missing:
        raise ArchiveError(f"resume archive {archive}: missing {', '.join(missing)}")
    for name, want in files.items():
        data = (archive / name).read_bytes()
        if len(data) != want["bytes"] or _sha256(data) != want["sha256"]:
            raise ArchiveError(
                f"resume archive {archive}: {name} is truncated or corrupted ({len(data)} bytes, "
                f"the manifest says {want['bytes']}; or its SHA-256 differs)"
            )
    return manifest


def check(archive: Path, config: str, root: Path = ROOT) -> dict:
    """The archive's manifest, if the archive is whole and made by this config and code."""
    manifest = whole(archive)
    if manifest.get("config_sha256") != _sha256(config.encode()):
        raise ArchiveError(
            f"resume archive {archive} was made by another config:\n  archive: "
            f"{manifest.get('config')!r}\n  now:     {config!r}\nrun with the archive's config, "
            f"or start afresh without the archive"
        )
    now = code_hash(root)
    if manifest.get("code_sha256") != now:
        raise ArchiveError(
            f"resume archive {archive} was made by other code (src/, conf/, experiments/paper/ "
            f"hash {manifest.get('code_sha256', '?')[:12]} at commit {manifest.get('commit')}; "
            f"now {now[:12]} at commit {git_commit(root)}): check out that commit to resume"
        )
    return manifest


def read_state(archive: Path, manifest: dict) -> bytes:
    return b"".join((archive / name).read_bytes() for name in sorted(manifest["files"]))


def restore(archive: Path, state: Path, config: str, root: Path = ROOT) -> dict:
    """Check ``archive``, then replace ``state`` with its contents (nothing changes on error)."""
    manifest = check(archive, config, root)
    staging = state.with_name(state.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(read_state(archive, manifest)), mode="r:xz") as tar:
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(f"resume archive {archive}: cannot be unpacked ({e})") from e
    old = state.with_name(state.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if state.exists():
        state.rename(old)
    (staging / "state").rename(state)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["write", "check", "restore", "sequence"])
    parser.add_argument("--archive", type=Path, help="folder holding manifest.json and parts")
    parser.add_argument("--state", type=Path, help="the state folder (pack dirs)")
    parser.add_argument("--out", type=Path, help="where write puts the archive")
    parser.add_argument("--config", default="", help="the protocol's config string")
    parser.add_argument("--sequence", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            m = write(args.state, args.out, args.config, args.sequence)
            print(f"archive: {len(m['files'])} part(s) + {MANIFEST} in {args.out}")
        elif args.action == "check":
            m = check(args.archive, args.config)
            print(
                f"archive {args.archive}: whole, sequence {m['sequence']}, written {m['written']}"
            )
        elif args.action == "restore":
            m = restore(args.archive, args.state, args.config)
            print(f"restored {args.state} from {args.archive} (sequence {m['sequence']})")
        else:  # the sequence number of an archive's manifest, 0 if none
            path = args.archive / MANIFEST
            print(json.loads(path.read_text()).get("sequence", 0) if path.is_file() else 0)
    except ArchiveError as e:
        print(f"archive.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
