"""Sample-based BoN metrics against their definitions and the continuous-reward limit."""

from __future__ import annotations

import pytest
import torch

from vbon.core.bon import bon_win_rate_limit
from vbon.core.metrics import best_of_first_n, mean_and_stderr, win_rate_vs_samples


def test_best_of_first_n_and_ties_count_half() -> None:
    rewards = torch.tensor([[0.1, 0.5, 0.3, 0.5], [2.0, 1.0, 3.0, 0.0]])
    assert best_of_first_n(rewards, 1).tolist() == pytest.approx([0.1, 2.0])
    assert best_of_first_n(rewards, 3).tolist() == pytest.approx([0.5, 3.0])
    win = win_rate_vs_samples(torch.tensor([0.5, 1.0]), rewards)
    assert win.tolist() == pytest.approx([(2 + 0.5 * 2) / 4, (1 + 0.5) / 4])


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_bon_win_rate_on_unseen_samples_is_n_over_n_plus_1(n: int) -> None:
    rewards = torch.randn(
        20_000, n + 32, generator=torch.Generator().manual_seed(n), dtype=torch.float64
    )
    mean, stderr = mean_and_stderr(win_rate_vs_samples(best_of_first_n(rewards, n), rewards[:, n:]))
    assert abs(mean - bon_win_rate_limit(n)) < 4 * stderr + 1e-3
