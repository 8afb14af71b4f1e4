"""Where built models live, and how a folder is written once even with concurrent builders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """`$VBON_CACHE`, or ~/.cache/vbon."""
    return Path(os.environ.get("VBON_CACHE", Path.home() / ".cache" / "vbon"))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` into a temporary sibling folder and rename it to `target` atomically.

    A reader never sees a half-written folder; if another process won the race, its copy is kept.
    """
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
