"""Reward functions for tests, importable by Ray workers (the test fixture puts tests/ on PYTHONPATH)."""

from __future__ import annotations


def nan_for_fishermen(prompts: list[str], completions: list[str]) -> list[float]:
    return [
        float("nan") if "fishermen" in p else float(len(c))
        for p, c in zip(prompts, completions, strict=True)
    ]


def letter_e_share(prompts: list[str], completions: list[str]) -> list[float]:
    """An easy reward to climb: the share of the completion's characters that are 'e'."""
    return [c.count("e") / max(len(c), 1) for c in completions]


def always_nan(prompts: list[str], completions: list[str]) -> list[float]:
    return [float("nan")] * len(completions)


def slow_letter_e_share(prompts: list[str], completions: list[str]) -> list[float]:
    """`letter_e_share` after 3 s: keeps BoN requests in flight long enough to signal a server."""
    import time

    time.sleep(3)
    return letter_e_share(prompts, completions)
