"""Reward functions for tests, importable by Ray workers (the test fixture puts tests/ on PYTHONPATH)."""

from __future__ import annotations


def nan_for_fishermen(prompts: list[str], completions: list[str]) -> list[float]:
    return [
        float("nan") if "fishermen" in p else float(len(c))
        for p, c in zip(prompts, completions, strict=True)
    ]
