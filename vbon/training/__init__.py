"""Distributed policy optimisation: Ray Train workers, each with a DeepSpeed ZeRO engine."""
