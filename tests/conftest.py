"""Shared fixtures: one model cache per checkout, so built-in models are built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("VBON_CACHE", str(ROOT / ".vbon-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# before anything imports ray: some of its addresses (a multi-node cluster's GCS) are fixed then
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from vbon.models.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory, tiny_path: Path) -> Path:
    """A 4-block Llama-shaped model (random weights) with the tiny tokenizer, saved like a hub
    folder: the architecture whose frozen trunk the policy shares with the reference."""
    from model_helpers import llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    folder = tmp_path_factory.mktemp("llama") / "model"
    llama(vocab=len(tok)).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
