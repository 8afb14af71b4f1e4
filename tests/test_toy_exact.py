"""The exact harness: Monte Carlo training with the real losses, checked by enumeration."""

from __future__ import annotations

import pytest
import torch

from vbon.core.bon import bon_probs, reward_masses
from vbon.core.vbon_reward import beta_from_n, l1_reward
from vbon.toy.train import ToyRun, optimum, train_toy
from vbon.toy.world import (
    all_sequences,
    distinct_reward,
    kl,
    leveled_reward,
    random_reference,
    sequence_index,
    tied_reward,
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
    run = ToyRun("vbon", n, m=300)
    target = optimum(ref, reward, run)
    policy = train_toy(ref, reward, run)
    assert kl(policy.probs(), target) <= 0.01
    # pi ~ pi_ref * F^(N-1) is an approximation: report how far it stays from pi_BoN
    gap = kl(policy.probs(), bon_probs(p, r, n))
    print(f"N={n}: KL(vBoN-l1 || pi_BoN) = {gap:.4f} nats")
    assert gap < kl(p, bon_probs(p, r, n))


TIE_WORLDS = {
    "13 levels": lambda: leveled_reward(V, L, 13, seed=1),
    "count of token 0": lambda: tied_reward(0),
    "5 levels": lambda: leveled_reward(V, L, 5, seed=2),
}


def _tied(name: str):
    ref = random_reference(V, L, seed=3)
    reward = TIE_WORLDS[name]()
    r = reward(all_sequences(V, L))
    assert len(torch.unique(r)) <= 13  # heavy ties: about 80 or more sequences per level
    return ref, reward, ref.probs(), r


@pytest.fixture(scope="module", params=list(TIE_WORLDS))
def tied_world(request):
    return _tied(request.param)


@pytest.fixture(scope="module", params=list(TIE_WORLDS)[:2])
def trained_world(request):
    """The tie-heavy worlds that Monte Carlo training is run on (it takes seconds each)."""
    return _tied(request.param)


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("method", ["vbon", "vbon_exact"])
def test_tie_aware_rewards_put_the_optimum_at_pi_bon(tied_world, method: str, n: int) -> None:
    """With the exact masses, both vBoN rewards' optimum pi_ref exp(R / beta) is pi_BoN exactly,
    ties included; F = P_lt alone (the reward before ties were handled) misses it."""
    ref, reward, p, r = tied_world
    target = bon_probs(p, r, n)
    assert kl(optimum(ref, reward, ToyRun(method, n)), target) < 1e-9
    p_lt, _ = reward_masses(p, r)
    lower_end = torch.softmax(torch.log(p) + l1_reward(p_lt, p_lt, n) / beta_from_n(n), 0)
    assert kl(lower_end, target) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 8])
def test_tie_aware_vbon_trains_to_pi_bon(trained_world, n: int) -> None:
    """Monte Carlo training in tie-heavy worlds: within 0.01 nats of pi_BoN with the exact CDF,
    within 0.05 with P_lt, P_le estimated from M = 300 reference samples."""
    ref, reward, p, r = trained_world
    target = bon_probs(p, r, n)
    exact = train_toy(ref, reward, ToyRun("vbon_exact", n)).probs()
    estimated = train_toy(ref, reward, ToyRun("vbon", n, m=300)).probs()
    assert kl(exact, target) <= 0.01
    assert kl(estimated, target) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 8])
def test_bon_distillation_reaches_pi_bon(trained_world, n: int) -> None:
    """The forward-KL minimiser on cached samples weighted by their chance to be the BoN pick
    (drawn without replacement, ties to the first draw) is pi_BoN itself."""
    ref, reward, p, r = trained_world
    target = bon_probs(p, r, n)
    policy = train_toy(ref, reward, ToyRun("bon_distill", n, lr=0.05)).probs()
    assert kl(policy, target) <= 0.01 and kl(target, policy) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 8])
def test_bonbon_with_tie_aware_targets_reaches_pi_bon(trained_world, n: int) -> None:
    """BoNBoN on best/worst pairs of N reference samples, each pair's IPO target its BoN log-ratio
    difference: within 0.01 nats of pi_BoN with the exact masses, 0.05 with M = 300."""
    ref, reward, p, r = trained_world
    target = bon_probs(p, r, n)
    exact = train_toy(ref, reward, ToyRun("bonbon", n)).probs()
    estimated = train_toy(ref, reward, ToyRun("bonbon", n, m=300)).probs()
    assert kl(exact, target) <= 0.01 and kl(estimated, target) <= 0.05


@pytest.mark.slow
def test_jeffreys_mix_reaches_pi_bon(world) -> None:
    ref, reward, p, r = world
    policy = train_toy(ref, reward, ToyRun("jeffreys", 4, mix=0.5, lr=0.05)).probs()
    assert kl(policy, bon_probs(p, r, 4)) <= 0.01
