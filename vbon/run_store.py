"""Run folders on remote storage: a workflow whose `run_dir` is a URI (s3://, gs://, file://...)
works in a local staging folder and mirrors each finished stage to the URI through pyarrow's
file systems; a rerun on another machine first pulls what the URI already holds.

A stage's manifest is mirrored last, after every other file of its folder, and the old one is
deleted first: a push cut short (its process killed, the network gone) leaves a folder without a
complete manifest, which `pull` skips, so the next run redoes that stage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vbon.errors import VbonError
from vbon.manifest import MANIFEST
from vbon.models.cache import cache_dir


def is_uri(run_dir: str) -> bool:
    return "://" in run_dir


def staging_dir(run_dir: str, name: str) -> Path:
    """The local working copy of RUN_DIR/NAME for a URI run folder."""
    return cache_dir() / "runs" / hashlib.sha256(run_dir.encode()).hexdigest()[:12] / name


def _remote(run_dir: str, name: str):
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(run_dir.rstrip("/"))
    except Exception as exc:  # pyarrow raises several types for bad or unsupported URIs
        raise VbonError(f"run_dir = {run_dir!r}: cannot open ({exc})") from None
    return fs, f"{root}/{name}"


def _complete_remotely(fs, folder: str) -> bool:
    """Whether the URI's stage folder holds a manifest that says complete."""
    import pyarrow.fs as pafs

    path = f"{folder}/{MANIFEST}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    with fs.open_input_stream(path) as f:
        try:
            return json.loads(f.read()).get("status") == "complete"
        except (ValueError, AttributeError):
            return False


def pull(run_dir: str, name: str, folders: list[str]) -> Path:
    """Copy the URI's complete stage folders into the staging folder (a folder whose push was
    cut short is left out, and its stage runs again); return the staging folder."""
    import pyarrow.fs as pafs

    local = staging_dir(run_dir, name)
    local.mkdir(parents=True, exist_ok=True)
    fs, root = _remote(run_dir, name)
    for folder in folders:
        if _complete_remotely(fs, f"{root}/{folder}"):
            (local / folder).mkdir(parents=True, exist_ok=True)  # copy_files makes subfolders only
            pafs.copy_files(
                f"{root}/{folder}",
                str(local / folder),
                source_filesystem=fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
    return local


def push(run_dir: str, name: str, local: Path, entry: str) -> None:
    """Mirror one stage folder (its manifest last) or one file of the staging folder to the URI."""
    import pyarrow.fs as pafs

    fs, root = _remote(run_dir, name)
    target = f"{root}/{entry}"
    here = pafs.LocalFileSystem()
    source = local / entry
    if not source.is_dir():
        fs.create_dir(root, recursive=True)
        pafs.copy_files(str(source), target, source_filesystem=here, destination_filesystem=fs)
        return
    if fs.get_file_info(f"{target}/{MANIFEST}").type == pafs.FileType.File:
        fs.delete_file(f"{target}/{MANIFEST}")  # first: the folder is incomplete from now on
    fs.delete_dir_contents(target, missing_dir_ok=True)
    fs.create_dir(target, recursive=True)
    manifest = source / MANIFEST
    inside = sorted(source.rglob("*"))
    for folder in (p for p in inside if p.is_dir()):  # each subfolder once, before its files
        fs.create_dir(f"{target}/{folder.relative_to(source).as_posix()}", recursive=True)
    files = [p for p in inside if p.is_file() and p != manifest]
    for path in files + ([manifest] if manifest.is_file() else []):
        dest = f"{target}/{path.relative_to(source).as_posix()}"
        pafs.copy_files(str(path), dest, source_filesystem=here, destination_filesystem=fs)
