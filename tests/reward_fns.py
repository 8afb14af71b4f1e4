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


_calls = 0


def letter_e_share_held(prompts: list[str], completions: list[str]) -> list[float]:
    """`letter_e_share`, but from a process's 8th call on it waits (60 s at most) for the file
    named by $VBON_TEST_RELEASE: a training worker scores once per step, so training holds in
    step 8 until the test has done what it must mid-run."""
    import os
    import time
    from pathlib import Path

    global _calls
    _calls += 1
    release, deadline = Path(os.environ["VBON_TEST_RELEASE"]), time.monotonic() + 60
    while _calls >= 8 and not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.05)
    return letter_e_share(prompts, completions)
