"""Run folders on remote storage: a workflow whose `run_dir` is a URI (s3://, gs://, file://...)
works in a local staging folder and mirrors each finished stage to the URI through pyarrow's
file systems; a rerun on another machine first pulls what the URI already holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vbon.errors import VbonError
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


def pull(run_dir: str, name: str, folders: list[str]) -> Path:
    """Copy the URI's stage folders into the staging folder; return the staging folder."""
    import pyarrow.fs as pafs

    local = staging_dir(run_dir, name)
    local.mkdir(parents=True, exist_ok=True)
    fs, root = _remote(run_dir, name)
    for folder in folders:
        if fs.get_file_info(f"{root}/{folder}").type == pafs.FileType.Directory:
            (local / folder).mkdir(parents=True, exist_ok=True)  # copy_files makes subfolders only
            pafs.copy_files(
                f"{root}/{folder}",
                str(local / folder),
                source_filesystem=fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
    return local


def push(run_dir: str, name: str, local: Path, entry: str) -> None:
    """Mirror one stage folder (or file) of the staging folder to the URI."""
    import pyarrow.fs as pafs

    fs, root = _remote(run_dir, name)
    target = f"{root}/{entry}"
    if (local / entry).is_dir():
        fs.delete_dir_contents(target, missing_dir_ok=True)
        fs.create_dir(target, recursive=True)
    else:
        fs.create_dir(root, recursive=True)
    pafs.copy_files(
        str(local / entry),
        target,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )
