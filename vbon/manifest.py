"""Stage manifests: the config that made an artifact, and its hash, beside the artifact.

Every stage writes `manifest.json` in its folder through these helpers: `claim_folder` refuses a
folder made by another config, `begin` marks the stage running, `finish` marks it complete, and
`is_complete` is what a rerun checks before skipping it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vbon.errors import VbonError

MANIFEST = "manifest.json"
MODEL_IDENTITY = "vbon_training.json"  # in an exported model: the training config that made it


def config_hash(sections: dict[str, BaseModel | int | float | str]) -> str:
    """sha256 of the canonical JSON of the config sections a stage depends on."""
    plain = {
        k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in sections.items()
    }
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_manifest(folder: Path, name: str = MANIFEST) -> dict | None:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.is_file() else None


def is_complete(folder: Path, key: str) -> bool:
    """The folder holds the finished output of the config with this key."""
    manifest = read_manifest(folder)
    return (
        manifest is not None and manifest["config_hash"] == key and manifest["status"] == "complete"
    )


def claim_folder(folder: Path, key: str, stage: str) -> dict | None:
    """The existing manifest if `folder` was made by the same config; refuse to mix configs."""
    manifest = read_manifest(folder)
    if manifest is not None and manifest["config_hash"] != key:
        raise VbonError(
            f"{folder} holds {stage} output of a different config "
            f"(hash {manifest['config_hash'][:12]} vs {key[:12]}); choose another output folder"
        )
    return manifest


def begin(folder: Path, stage: str, key: str, **info: Any) -> dict:
    """Create the folder and mark the stage running; returns the manifest to `finish`."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    manifest = {"stage": stage, "config_hash": key, "status": "running", **info}
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


def finish(folder: Path, manifest: dict, **info: Any) -> dict:
    """Mark the stage complete, adding `info`; the last write of a stage."""
    manifest = {**manifest, **info, "status": "complete"}
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest
