"""Held-out evaluation: reward, win rates and KL of every method, as numbers and pictures."""
