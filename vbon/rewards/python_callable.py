"""A user's Python function, named `module:function`, called as f(prompts, completions)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from vbon.errors import RewardError
from vbon.rewards.base import RewardScorer


class CallableScorer(RewardScorer):
    def __init__(self, spec: str) -> None:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RewardError(
                f"reward.function = {spec!r}: cannot import module {module_name!r} ({exc}); "
                "install it or put it on PYTHONPATH"
            ) from None
        self._fn = getattr(module, attr, None)
        if not callable(self._fn):
            raise RewardError(f"reward.function = {spec!r}: {module_name} has no function {attr!r}")

    def _score(self, prompts: list[str], completions: list[str]) -> Sequence[float]:
        return list(self._fn(prompts, completions))
