"""Stage manifests: the config that made an artifact, and its hash, beside the artifact."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vbon.errors import VbonError


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


def read_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def claim_folder(folder: Path, key: str, stage: str) -> dict | None:
    """The existing manifest if `folder` was made by the same config; refuse to mix configs."""
    manifest = read_manifest(folder)
    if manifest is not None and manifest["config_hash"] != key:
        raise VbonError(
            f"{folder} holds {stage} output of a different config "
            f"(hash {manifest['config_hash'][:12]} vs {key[:12]}); choose another output folder"
        )
    return manifest
