"""The policy-gradient losses, each against its definition."""

from __future__ import annotations

import pytest
import torch

from vbon.core.losses import (
    bon_pairs,
    bonbon_loss,
    effective_sample_fraction,
    gae_advantages,
    kl_full,
    kl_k1,
    kl_k3,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    pair_columns,
    positional_group_advantages,
    ppo_policy_loss,
    rloo_advantages,
    sequence_kl_penalized_reward,
    snis_advantages,
    value_loss,
    weighted_nll,
)

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])


def test_kl_estimators_are_unbiased_and_k3_nonnegative() -> None:
    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    ref = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    exact = float((pi * (pi.log() - ref.log())).sum())
    y = torch.multinomial(pi, 400_000, replacement=True, generator=g)
    k1, k3 = kl_k1(pi.log()[y], ref.log()[y]), kl_k3(pi.log()[y], ref.log()[y])
    assert (k3 >= 0).all()
    for est in (k1, k3):
        stderr = float(est.std()) / len(est) ** 0.5
        assert abs(float(est.mean()) - exact) < 4 * stderr


def test_gae_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    gamma, lam = 0.9, 0.8
    adv, ret = gae_advantages(rewards * MASK, values, MASK, gamma, lam)
    for b in range(3):
        length = int(MASK[b].sum())
        v = [*values[b, :length].tolist(), 0.0]
        deltas = [rewards[b, t] + gamma * v[t + 1] - v[t] for t in range(length)]
        for t in range(length):
            want = sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t))
            assert adv[b, t] == pytest.approx(float(want), abs=1e-5)
            assert ret[b, t] == pytest.approx(float(want + v[t]), abs=1e-5)
    assert (adv * (1 - MASK)).abs().sum() == 0


def test_gae_without_values_is_reward_to_go() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    adv, _ = gae_advantages(rewards, None, MASK[:1], gamma=1.0, lam=1.0)
    assert adv.tolist() == [[6.0, 5.0, 3.0, 0.0]]


def test_kl_penalized_rewards_put_score_on_last_token() -> None:
    logp, ref = torch.full((3, 4), -1.0), torch.full((3, 4), -1.5)
    score = torch.tensor([10.0, 20.0, 30.0])
    r = kl_penalized_rewards(score, kl_k1(logp, ref), MASK, beta=0.1)
    assert r[0].tolist() == pytest.approx([-0.05, -0.05, 9.95, 0.0])
    assert r[1, 3] == pytest.approx(19.95) and r[2, 0] == pytest.approx(29.95)
    total = sequence_kl_penalized_reward(score, kl_k1(logp, ref), MASK, beta=0.1)
    assert torch.allclose(total, r.sum(-1))


def test_full_kl_splits_the_sequence_kl_gradient_exactly() -> None:
    """On a 2-token autoregressive world (vocab 3), by enumeration: sum_t kl_full is the sequence
    KL(pi || ref) in expectation, and its gradient is E[grad log pi(y) sum_t KL_t] (through the
    reward) plus E[sum_t grad KL_t(s_t)] (kl_full in the loss)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 3, generator=g, requires_grad=True)  # state: start, then first token
    ref = torch.log_softmax(torch.randn(4, 3, generator=g), -1)
    logp = torch.log_softmax(theta, -1)
    seqs = [(a, b) for a in range(3) for b in range(3)]
    states = torch.tensor([[0, 1 + a] for a, _ in seqs])
    tokens = torch.tensor(seqs)
    seq_logp = logp[states, tokens].sum(-1)
    p = seq_logp.exp()
    kl_t = kl_full(logp[states], ref[states])  # [9, 2]
    exact = (p * (seq_logp - ref[states, tokens].sum(-1))).sum()
    assert torch.allclose((p.detach() * kl_t.sum(-1)).sum(), exact)

    (want,) = torch.autograd.grad(exact, theta, retain_graph=True)
    through_reward = (p.detach() * seq_logp * kl_t.sum(-1).detach()).sum()
    direct = (p.detach() * kl_t.sum(-1)).sum()
    (reward_only,) = torch.autograd.grad(through_reward, theta, retain_graph=True)
    (got,) = torch.autograd.grad(through_reward + direct, theta)
    assert torch.allclose(got, want, atol=1e-6)
    assert (reward_only - want).abs().max() > 1e-2  # the direct part is not negligible


def test_ppo_gradient_is_policy_gradient_then_clips() -> None:
    logp = torch.zeros(3, 4, requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 3.0, 9.0]] * 3)
    loss, clip_frac = ppo_policy_loss(logp, logp.detach(), adv, MASK)
    loss.backward()
    assert torch.allclose(logp.grad, -adv * MASK / MASK.sum())
    assert clip_frac == 0
    # ratio e^{0.5} > 1.2 with A > 0, and e^{-0.5} < 0.8 with A < 0: both clipped, no gradient
    for shift, a in ((0.5, 1.0), (-0.5, -1.0)):
        lp = torch.full((1, 2), shift, requires_grad=True)
        loss, clip_frac = ppo_policy_loss(
            lp, torch.zeros(1, 2), torch.full((1, 2), a), torch.ones(1, 2)
        )
        loss.backward()
        assert lp.grad.abs().sum() == 0 and clip_frac == 1


def test_value_loss_is_zero_at_target_and_clips() -> None:
    ret = torch.randn(3, 4)
    assert value_loss(ret, ret, ret, MASK) == 0
    assert value_loss(ret + 5.0, ret + 5.0, ret, MASK) == pytest.approx(12.5)
    # V moved 5 from V_old towards a target 10 away: the clipped V_old + 0.2 is 9.8 off, and the
    # pessimistic max keeps it: 0.5 * 9.8^2 rather than the unclipped 0.5 * 5^2
    old = torch.zeros(3, 4)
    clipped = value_loss(old + 5.0, old, old + 10.0, MASK, clip_range=0.2)
    assert clipped == pytest.approx(0.5 * 9.8**2)


def test_rloo_is_leave_one_out_and_zero_sum() -> None:
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    adv = rloo_advantages(r)
    assert adv[0].tolist() == pytest.approx([1 - 4.0, 2 - 3.5, 6 - 1.5])
    assert torch.allclose(adv.sum(-1), torch.zeros(2))
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(2, 1))


def test_snis_gradient_is_the_objectives_gradient_under_the_reference() -> None:
    # At pi = pi_ref the weights are uniform: R minus the group mean, and zero-sum.
    total = torch.tensor([[1.0, 2.0, 6.0]])
    same = snis_advantages(total, torch.zeros(1, 3))
    assert torch.allclose(same, total - 3.0) and same.sum().abs() < 1e-6
    assert torch.allclose(effective_sample_fraction(torch.zeros(1, 3)), torch.ones(1))
    # Away from pi_ref: with y_j ~ pi_ref, the mean of sum_j A_j grad log pi(y_j) is the true
    # gradient of E_pi[R] for a softmax policy over 3 outcomes (SNIS: bias O(1/k)).
    ref = torch.tensor([0.5, 0.3, 0.2])
    reward = torch.tensor([0.0, 1.0, 3.0])
    logits = torch.tensor([0.3, -0.2, 0.4], requires_grad=True)
    pi = torch.softmax(logits, -1)
    (exact,) = torch.autograd.grad((pi * reward).sum(), logits)
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(ref.expand(20_000, 3), 64, replacement=True, generator=g)
    logratio = (torch.log(pi.detach()) - torch.log(ref))[y]
    adv = snis_advantages(reward[y], logratio)
    logp = torch.log_softmax(logits, -1)[y]
    (est,) = torch.autograd.grad((adv * logp).sum(-1).mean() / 64, logits, retain_graph=True)
    assert torch.allclose(est, exact, atol=0.03)  # measured: within 0.018
    # without the importance weights it would estimate another gradient
    plain = snis_advantages(reward[y], torch.zeros_like(logratio))
    (off,) = torch.autograd.grad((plain * logp).sum(-1).mean() / 64, logits)
    assert (off - exact).abs().max() > 0.1
    assert 0.0 < effective_sample_fraction(logratio).mean() < 1.0


def test_weighted_nll_and_masked_helpers() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.5, 0.9], [0.1, 0.2, 0.3, 0.4]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    one = weighted_nll(logp[:1], mask[:1])
    assert one == pytest.approx(-(logp[0, :3].sum() / 3).item())  # BoN-SFT: token-mean NLL
    w = torch.tensor([0.75, 0.25])
    expected = -(0.75 * logp[0, :3].sum() + 0.25 * logp[1, :2].sum()) / (0.75 * 3 + 0.25 * 2)
    assert weighted_nll(logp, mask, w) == pytest.approx(expected.item())
    assert weighted_nll(logp, mask, torch.tensor([1.0, 0.0])) == pytest.approx(one.item())
    assert masked_mean(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])) == 2.0
    w = masked_whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert w[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_positional_advantages_reduce_to_rloo_and_snis_for_sequence_returns() -> None:
    g = torch.Generator().manual_seed(3)
    total = torch.randn(2, 4, generator=g)
    mask = torch.ones(2, 4, 5)
    returns = total[..., None].expand(2, 4, 5)
    rloo = positional_group_advantages(returns, mask)
    assert torch.allclose(rloo, rloo_advantages(total)[..., None].expand(2, 4, 5), atol=1e-6)
    ratio = torch.randn(2, 4, generator=g)
    snis = positional_group_advantages(returns, mask, ratio)
    assert torch.allclose(snis, snis_advantages(total, ratio)[..., None].expand(2, 4, 5), atol=1e-6)
    # padding gets no advantage and is no part of another sample's baseline
    mask[0, 0, 3:] = 0.0
    returns = torch.randn(2, 4, 5, generator=g)
    adv = positional_group_advantages(returns, mask)
    assert (adv[0, 0, 3:] == 0).all()
    assert adv[0, 1, 4] == pytest.approx(float(returns[0, 1, 4] - returns[0, 2:, 4].mean()))
    assert adv[0, 1, 0] == pytest.approx(float(returns[0, 1, 0] - returns[0, [0, 2, 3], 0].mean()))


def test_prefix_baseline_gradient_is_the_kl_regularised_objectives_gradient() -> None:
    """By enumeration: a two-token world with an EOS (sequences of length 1 or 2), k = 2 samples
    per prompt. Per-token returns from GAE(lambda = 1) with an arbitrary prefix baseline, centred
    per position over the other sample, give in expectation the exact gradient of
    E_pi[R] - beta KL(pi || pi_ref); GAE with lambda < 1 does not."""
    vocab, eos, beta = 3, 0, 0.3
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(1 + vocab, vocab, generator=g, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.randn(1 + vocab, vocab, generator=g, dtype=torch.float64)
    seqs = [(a,) for a in [eos]] + [(a, b) for a in range(vocab) if a != eos for b in range(vocab)]
    reward = torch.randn(len(seqs), generator=g, dtype=torch.float64)
    phi_table = torch.randn(1 + vocab, generator=g, dtype=torch.float64)  # V(empty), V(a)

    def token_logprobs(logits: torch.Tensor, seq: tuple) -> torch.Tensor:
        states = [0] + [1 + a for a in seq[:-1]]
        lp = torch.log_softmax(logits[states], -1)
        out = lp[torch.arange(len(seq)), torch.tensor(seq)]
        return torch.nn.functional.pad(out, (0, 2 - len(seq)))

    lp = torch.stack([token_logprobs(theta, s) for s in seqs])
    ref_lp = torch.stack([token_logprobs(ref_logits, s) for s in seqs])
    mask = torch.tensor([[1.0, float(len(s) == 2)] for s in seqs], dtype=torch.float64)
    phi = torch.stack([phi_table[[0, 1 + s[0]]] for s in seqs]) * mask
    seq_lp = (lp * mask).sum(-1)
    pi = seq_lp.exp()
    kl_seq = ((lp - ref_lp) * mask).sum(-1)
    objective = (pi * reward).sum() - beta * (pi * kl_seq).sum()
    (exact,) = torch.autograd.grad(objective, theta, retain_graph=True)

    def expected_gradient(lam: float) -> torch.Tensor:
        pairs = torch.cartesian_prod(torch.arange(len(seqs)), torch.arange(len(seqs)))
        kl = (lp - ref_lp).detach()
        rewards = kl_penalized_rewards(
            reward[pairs].flatten(), kl[pairs].flatten(0, 1), mask[pairs].flatten(0, 1), beta
        )
        returns = gae_advantages(
            rewards, phi[pairs].flatten(0, 1), mask[pairs].flatten(0, 1), 1.0, lam
        )[0]
        adv = positional_group_advantages(returns.view(-1, 2, 2), mask[pairs])
        weight = pi.detach()[pairs].prod(-1)  # P(the pair) under pi
        surrogate = (weight[:, None, None] * adv * lp[pairs]).sum() / 2
        return torch.autograd.grad(surrogate, theta, retain_graph=True)[0]

    assert torch.allclose(expected_gradient(1.0), exact, atol=1e-10)
    assert (expected_gradient(0.5) - exact).abs().max() > 1e-3


def test_bon_pairs_take_the_first_best_and_first_worst_of_each_group() -> None:
    rewards = torch.tensor([[0.3, 0.9, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 2.0, 0.5] * 2])
    best, worst = bon_pairs(rewards, 4)
    assert best.tolist() == [[1, 4], [1, 5]]  # ties: the first draw, the BoN pick
    assert worst.tolist() == [[2, 4], [3, 7]]  # an all-tied group: best == worst
    with pytest.raises(ValueError, match="groups of N"):
        bon_pairs(rewards, 3)
    assert pair_columns(rewards, 4).tolist() == [[1, 2, 4, 4], [1, 3, 5, 7]]


def test_bonbon_loss_is_sft_plus_ipo_around_each_pairs_target() -> None:
    best, worst = torch.tensor([2.0, 0.5], requires_grad=True), torch.tensor([-1.0, 0.5])
    target, logprob = torch.tensor([3.0, 0.0]), torch.tensor([-4.0, -6.0])
    assert float(bonbon_loss(best, worst, target, logprob, 0.0)) == 0.0  # h = h* on both pairs
    loss = bonbon_loss(best, worst, target + 1.0, logprob, 0.25)
    assert float(loss) == pytest.approx(0.25 * 5.0 + 0.75 * 1.0)
    loss.backward()  # d/dh (h - h*)^2 / 2 pairs = (h - h*): each best is pushed up by 0.75
    assert best.grad.tolist() == pytest.approx([-0.75, -0.75])
