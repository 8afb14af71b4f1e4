"""The CDF estimator, the vBoN rewards and the N <-> beta mapping."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vbon.core.bon import bon_probs, reward_masses
from vbon.core.cdf import empirical_cdf, empirical_masses
from vbon.core.vbon_reward import beta_from_n, exact_reward, l1_reward, n_from_beta
from vbon.methods import METHODS

floats = st.floats(-100, 100, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(floats, min_size=1, max_size=50), st.lists(floats, min_size=1, max_size=20))
def test_cdf_definition_and_range(ref: list[float], query: list[float]) -> None:
    ref_t, q = torch.tensor([ref], dtype=torch.float64), torch.tensor([query], dtype=torch.float64)
    f = empirical_cdf(q, ref_t)[0]
    m = len(ref)
    for value, got in zip(query, f.tolist(), strict=True):
        assert got == pytest.approx((sum(r < value for r in ref) + 1) / (m + 1))
    log_f = torch.log(f)
    assert (log_f >= -math.log(m + 1) - 1e-12).all() and (log_f <= 0).all()
    p_lt, p_le = empirical_masses(q, ref_t)
    assert torch.equal(p_lt[0], f)
    for value, got in zip(query, p_le[0].tolist(), strict=True):
        assert got == pytest.approx((sum(r <= value for r in ref) + 1) / (m + 1))


@settings(max_examples=100, deadline=None)
@given(st.lists(floats, min_size=1, max_size=30), floats, floats)
def test_cdf_is_monotone(ref: list[float], a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    f = empirical_cdf(torch.tensor([[lo, hi]]), torch.tensor([ref]))[0]
    assert f[0] <= f[1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(floats, min_size=1, max_size=12), min_size=1, max_size=6), floats)
def test_batched_cdf_with_different_m_equals_per_prompt(refs: list[list[float]], x: float) -> None:
    m_max = max(len(r) for r in refs)
    padded = torch.tensor([r + [1e9] * (m_max - len(r)) for r in refs])
    mask = torch.tensor([[True] * len(r) + [False] * (m_max - len(r)) for r in refs])
    query = torch.full((len(refs), 1), x)
    batched = empirical_cdf(query, padded, mask)
    for i, r in enumerate(refs):
        alone = empirical_cdf(query[i : i + 1], torch.tensor([r]))
        assert torch.equal(batched[i], alone[0])


def test_cdf_extremes() -> None:
    ref = torch.tensor([[0.0, 1.0, 2.0]])
    assert empirical_cdf(torch.tensor([[-5.0, 0.0, 0.5, 10.0]]), ref).tolist() == [
        [0.25, 0.25, 0.5, 1.0]
    ]


def test_n_beta_mapping_round_trips() -> None:
    for n in (2, 3, 4, 8, 16, 100):
        assert beta_from_n(n) == pytest.approx(1 / (n - 1))
        assert n_from_beta(beta_from_n(n)) == pytest.approx(n)
    with pytest.raises(ValueError):
        beta_from_n(1)
    with pytest.raises(ValueError):
        n_from_beta(0.0)


def _space(k: int = 300, seed: int = 0, levels: int | None = None):
    g = torch.Generator().manual_seed(seed)
    exp1 = -torch.log1p(-torch.rand(k, generator=g, dtype=torch.float64))
    p = exp1 / exp1.sum()  # a Dirichlet(1, ..., 1) draw from this test's own generator
    r = torch.randn(k, generator=g, dtype=torch.float64)
    if levels is not None:
        r = torch.randint(levels, (k,), generator=g).double()
    return p, r, *reward_masses(p, r)


@pytest.mark.parametrize("levels", [None, 3, 13])
@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_exact_reward_optimum_is_pi_bon(n: int, levels: int | None) -> None:
    """pi_ref * exp(R_exact / beta) with beta = 1/(N-1) normalises to pi_BoN exactly, with
    distinct and with tied rewards."""
    p, r, p_lt, p_le = _space(levels=levels)
    reward = exact_reward(p_lt, p_le, torch.log(p), n)
    optimum = torch.softmax(torch.log(p) + reward / beta_from_n(n), 0)
    assert torch.allclose(optimum, bon_probs(p, r, n), atol=1e-12)
    # dividing by N (as the authors' code does) moves the optimum off pi_BoN, by far more than
    # the rounding above (a few levels at large N leave little mass outside the top level)
    off = torch.softmax(torch.log(p) + reward * (n - 1) / n / beta_from_n(n), 0)
    assert (off - bon_probs(p, r, n)).abs().sum() > 1e-5


@pytest.mark.parametrize("n", [2, 4, 8])
def test_l1_reward_is_log_f_untied_and_the_block_mean_tied(n: int) -> None:
    p, _, p_lt, _ = _space()
    f = p_lt.clamp_min(1e-3)
    assert torch.allclose(l1_reward(f, f, n), torch.log(f))  # no tie: the paper's log F
    optimum = torch.softmax(torch.log(p) + l1_reward(f, f, n) / beta_from_n(n), 0)
    target = p * f ** (n - 1)
    assert torch.allclose(optimum, target / target.sum(), atol=1e-12)
    # a tied block [a, b]: exp((N-1) R) is the mean of u^(N-1) over it
    a, b = torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    mean = (b**n - a**n) / (n * (b - a))
    assert torch.allclose(torch.exp((n - 1) * l1_reward(a, b, n)), mean)


def test_registry_scores_map_rewards_through_the_masses() -> None:
    rewards = torch.tensor([[0.1, 0.5], [0.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.2, 0.5, 9.0], [0.0, 0.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    seq_ref = torch.tensor([[-3.0, -4.0], [-5.0, -6.0]], dtype=torch.float64)
    p_lt, p_le = empirical_masses(rewards, ref, mask)
    # (#below + 1) / (M + 1) and (#at-or-below + 1) / (M + 1); prompt 1 has M = 2 (masked)
    assert torch.allclose(p_lt, torch.tensor([[2 / 5, 3 / 5], [1 / 3, 1 / 3]], dtype=torch.float64))
    assert torch.allclose(p_le, torch.tensor([[2 / 5, 4 / 5], [3 / 3, 1 / 3]], dtype=torch.float64))
    args = (rewards, p_lt, p_le, seq_ref, 4)
    assert torch.equal(METHODS["kl_rl"].score(*args), rewards)
    l1 = METHODS["vbon"].score(*args)
    assert torch.allclose(l1[0, 0], torch.log(p_lt[0, 0]))  # 0.1: untied, the paper's log F
    assert l1[0, 1] > torch.log(p_lt[0, 1])  # 0.5 ties a reference sample: the block mean
    assert l1[1, 0] > torch.log(p_lt[1, 0])  # so do the zeros
    assert torch.allclose(METHODS["vbon_exact"].score(*args), exact_reward(p_lt, p_le, seq_ref, 4))
    assert METHODS["bon_sft"].score is None and METHODS["bon_distill"].score is None
