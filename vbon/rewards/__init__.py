"""Reward scorers behind one interface: prompts and completions in, one finite float each out."""

from vbon.rewards.base import RewardScorer, build_scorer

__all__ = ["RewardScorer", "build_scorer"]
