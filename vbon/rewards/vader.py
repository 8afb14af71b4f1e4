"""VADER sentiment (Hutto and Gilbert, 2014): the compound score of the completion, in [-1, 1]."""

from __future__ import annotations

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from vbon.rewards.base import RewardScorer


class VaderScorer(RewardScorer):
    """Scores the completion alone; the lexicon ships in the package, so it works offline."""

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def _score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [self._analyzer.polarity_scores(c)["compound"] for c in completions]
