"""Shared fixtures: one model cache per checkout, so built-in models are built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("VBON_CACHE", str(ROOT / ".vbon-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from vbon.models.tiny import ensure_tiny

    return ensure_tiny()
