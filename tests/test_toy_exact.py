"""The exact harness: Monte Carlo training with the real losses, checked by enumeration."""

from __future__ import annotations

import pytest
import torch

from vbon.core.bon import bon_probs
from vbon.toy.train import ToyRun, optimum, train_toy
from vbon.toy.world import (
    TabularPolicy,
    all_sequences,
    distinct_reward,
    kl,
    random_reference,
    sequence_index,
)

V, L = 4, 5


@pytest.fixture(scope="module")
def world():
    ref = random_reference(V, L, seed=0)
    reward = distinct_reward(V, L, seed=1)
    seqs = all_sequences(V, L)
    return ref, reward, ref.probs(), reward(seqs)


def test_tabular_policy_is_a_distribution_and_samples_it() -> None:
    ref = random_reference(3, 3, seed=5)
    p = ref.probs()
    assert p.shape == (27,) and float(p.sum()) == pytest.approx(1.0)
    seqs = ref.sample(200_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(sequence_index(seqs, 3), minlength=27).double() / len(seqs)
    assert 0.5 * (freq - p).abs().sum() < 0.01
    assert torch.equal(all_sequences(3, 3)[sequence_index(seqs[:5], 3)], seqs[:5])
    assert isinstance(ref, TabularPolicy)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_exact_reward_with_exact_cdf_reaches_pi_bon(world, n: int) -> None:
    ref, reward, p, r = world
    policy = train_toy(ref, reward, ToyRun("vbon_exact", n))
    assert kl(policy.probs(), bon_probs(p, r, n)) <= 0.01
    assert kl(p, bon_probs(p, r, n)) > 0.1  # the reference itself is far off


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_exact_reward_with_estimated_cdf(world, n: int) -> None:
    ref, reward, p, r = world
    policy = train_toy(ref, reward, ToyRun("vbon_exact", n, m=300))
    assert kl(policy.probs(), bon_probs(p, r, n)) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_l1_reward_reaches_its_own_optimum(world, n: int) -> None:
    ref, reward, p, r = world
    run = ToyRun("vbon_l1", n, m=300)
    target = optimum(ref, reward, run)
    policy = train_toy(ref, reward, run)
    assert kl(policy.probs(), target) <= 0.01
    # pi ~ pi_ref * F^(N-1) is an approximation: report how far it stays from pi_BoN
    gap = kl(policy.probs(), bon_probs(p, r, n))
    print(f"N={n}: KL(vBoN-l1 || pi_BoN) = {gap:.4f} nats")
    assert gap < kl(p, bon_probs(p, r, n))
