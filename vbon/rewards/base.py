"""The scorer interface, the finiteness check, and the factory from a `RewardConfig`."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from vbon.config import RewardConfig
from vbon.errors import RewardError


class RewardScorer(ABC):
    """score(prompts, completions) -> one finite reward per pair."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        rewards = [float(r) for r in self._score(list(prompts), list(completions))]
        if len(rewards) != len(prompts):
            raise RewardError(
                f"reward scorer {type(self).__name__} returned {len(rewards)} rewards "
                f"for {len(prompts)} completions"
            )
        check_finite(rewards, prompts)
        return rewards

    @abstractmethod
    def _score(self, prompts: list[str], completions: list[str]) -> Sequence[float]: ...


def check_finite(rewards: Sequence[float], prompts: Sequence[str]) -> None:
    """Raise `RewardError` naming the first prompt whose reward is NaN or infinite."""
    for i, (r, prompt) in enumerate(zip(rewards, prompts, strict=True)):
        if not math.isfinite(r):
            shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            raise RewardError(
                f"reward {r} (not finite) for completion {i} of prompt {shown!r}; "
                "fix the reward scorer: vbon never replaces a bad reward with 0"
            )


def build_scorer(cfg: RewardConfig) -> RewardScorer:
    """The scorer that `cfg.kind` names."""
    if cfg.kind == "vader":
        from vbon.rewards.vader import VaderScorer

        return VaderScorer()
    if cfg.kind == "hf_classifier":
        from vbon.rewards.classifier import ClassifierScorer

        return ClassifierScorer(cfg)
    if cfg.kind == "callable":
        from vbon.rewards.python_callable import CallableScorer

        return CallableScorer(cfg.function)
    from vbon.rewards.http import HttpScorer

    return HttpScorer(cfg)
