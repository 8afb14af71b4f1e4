"""Sample-based BoN metrics against their definitions and the continuous-reward limit."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vbon.core.bon import bon_probs, bon_win_rate_limit, empirical_bon_log_ratio, win_rate_vs_ref
from vbon.core.metrics import (
    best_of_first_n,
    bon_reward,
    bon_win_rate,
    break_even_requests,
    gain_recovered,
    interpolate_curve,
    log_ratio_alignment,
    mean_and_stderr,
    mean_and_stderr_from_sums,
    reweighted_win_rate,
    tilt_scale,
    win_rate_vs_bon,
    win_rate_vs_samples,
)


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


def test_stderr_from_sums_equals_stderr_over_the_values() -> None:
    """The learning curve's all-reduced sums give the same mean and standard error as the values;
    merging two workers' sums is the same as one worker holding every prompt."""
    x = torch.rand(37, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = x[:20], x[20:]
    sums = [
        float(len(a) + len(b)),
        float(a.sum() + b.sum()),
        float(a.square().sum() + b.square().sum()),
    ]
    assert mean_and_stderr_from_sums(*sums) == pytest.approx(mean_and_stderr(x), rel=1e-9)
    assert mean_and_stderr_from_sums(3.0, 1.5, 0.75) == pytest.approx((0.5, 0.0))  # all equal
    mean, se = mean_and_stderr_from_sums(1.0, 0.7, 0.49)
    assert mean == pytest.approx(0.7) and se != se  # one prompt: no standard error (NaN)


def _beats(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_bon_statistics_equal_the_average_over_every_subset(n: int) -> None:
    """Brute force over every N-subset (and unseen sample) of M = 7 tied rewards."""
    rewards = torch.tensor(
        [[0.0, 0.0, 1.0, 0.0, 2.0, 1.0, -1.0], [3.0, 3.0, 3.0, 0.0, 3.0, 3.0, 3.0]]
    )
    probes = torch.tensor([[0.0, 1.0, 2.5], [3.0, -1.0, 0.0]])
    m = rewards.shape[1]
    for p, row in enumerate(rewards.tolist()):
        subsets = list(itertools.combinations(range(m), n))
        reward = sum(max(row[i] for i in s) for s in subsets) / len(subsets)
        vs_bon = [
            sum(_beats(x, max(row[i] for i in s)) for s in subsets) / len(subsets)
            for x in probes[p].tolist()
        ]
        wins = [
            _beats(max(row[i] for i in s), row[j])
            for j in range(m)
            for s in itertools.combinations([i for i in range(m) if i != j], n)
        ]
        assert float(bon_reward(rewards, n)[p]) == pytest.approx(reward)
        assert win_rate_vs_bon(probes, rewards, n)[p].tolist() == pytest.approx(vs_bon)
        assert float(bon_win_rate(rewards, n)[p]) == pytest.approx(sum(wins) / len(wins))


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_bon_win_rate_is_n_over_n_plus_1_on_every_prompt_without_ties(n: int) -> None:
    rewards = torch.randn(50, 12, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    assert bon_win_rate(rewards, n).tolist() == pytest.approx([bon_win_rate_limit(n)] * 50)
    with pytest.raises(ValueError, match="N <= M - 1"):
        bon_win_rate(rewards, 12)


def test_gain_recovered_is_the_ratio_of_gains_with_a_paired_error() -> None:
    g = torch.Generator().manual_seed(0)
    bon = 0.8 + 0.1 * torch.rand(200, generator=g, dtype=torch.float64)
    policy = 0.5 + 0.75 * (bon - 0.5)  # recovers exactly 75% on every prompt
    ratio, se = gain_recovered(policy, bon)
    assert ratio == pytest.approx(0.75) and se == pytest.approx(0.0, abs=1e-12)
    noisy = policy + 0.05 * torch.randn(200, generator=g, dtype=torch.float64)
    ratio, se = gain_recovered(noisy, bon)
    assert abs(ratio - 0.75) < 4 * se and 0 < se < 0.05


def test_interpolate_curve_and_break_even() -> None:
    xs, ys = [0.0, 0.2, 0.6], [0.5, 0.7, 0.8]
    assert interpolate_curve(0.1, xs, ys) == pytest.approx(0.6)
    assert interpolate_curve(0.4, xs, ys) == pytest.approx(0.75)
    assert interpolate_curve(-1.0, xs, ys) == 0.5 and interpolate_curve(9.0, xs, ys) == 0.8
    assert break_even_requests(300.0, 1.0, 4.0) == pytest.approx(100.0)
    assert break_even_requests(300.0, 4.0, 4.0) == float("inf")


def test_log_ratio_alignment_is_the_per_prompt_correlation_and_slope() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(400, 16, generator=g, dtype=torch.float64)
    shift = torch.randn(400, 1, generator=g, dtype=torch.float64)  # each prompt's normaliser
    assert log_ratio_alignment(0.3 * target + shift, target) == pytest.approx((1.0, 0.3))
    assert log_ratio_alignment(-target, target) == pytest.approx((-1.0, -1.0))
    noise = torch.randn(400, 16, generator=g, dtype=torch.float64)
    corr, slope = log_ratio_alignment(0.5 * target + noise, target)
    assert corr == pytest.approx(0.5 / (0.25 + 1) ** 0.5, abs=0.03)
    assert slope == pytest.approx(0.5, abs=0.03)


def test_the_kl_optimal_tilt_along_a_noisy_feature_has_slope_corr_squared() -> None:
    """On each prompt's 16 equally likely samples, pi = softmax(c g) for a feature g that
    correlates about 0.5 with t; the exact objective E_pi[t] - KL(pi || uniform) is maximised
    over c on a grid. The maximiser's tilt scale is 1 (its slope corr^2), half of it gives 0.5."""
    g = torch.Generator().manual_seed(1)
    t = 0.1 * torch.randn(2000, 16, generator=g, dtype=torch.float64)  # a small tilt
    feature = t + 0.17 * torch.randn(2000, 16, generator=g, dtype=torch.float64)

    def objective(c: float) -> float:
        log_q = torch.log_softmax(c * feature, -1)
        return float((log_q.exp() * (t - log_q - math.log(16))).sum(-1).mean())

    best = max((i / 100 for i in range(301)), key=objective)
    corr, slope = log_ratio_alignment(best * feature, t)
    assert 0.4 < corr < 0.6
    assert slope == pytest.approx(corr**2, abs=0.02)
    assert tilt_scale(corr, slope) == pytest.approx(1.0, abs=0.05)
    assert tilt_scale(*log_ratio_alignment(best / 2 * feature, t)) == pytest.approx(0.5, abs=0.03)


def test_reweighted_win_rate_of_the_reference_and_of_bon() -> None:
    rewards = torch.tensor([[0.0, 0.5, 0.0, -1.0, 0.5, 2.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0] * 2])
    assert reweighted_win_rate(torch.zeros_like(rewards), rewards) == pytest.approx(0.5)
    p = torch.full_like(rewards, 1 / 8, dtype=torch.float64)
    bon = win_rate_vs_ref(bon_probs(p, rewards.double(), 4), p, rewards.double()).mean()
    assert reweighted_win_rate(empirical_bon_log_ratio(rewards, 4), rewards) == pytest.approx(
        float(bon)
    )
