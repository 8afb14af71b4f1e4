"""The glue between the math and the models, without Ray: the sampler's logit warping, completion
lengths, the advantage estimators, the DeepSpeed config, the value slice and the registry."""

from __future__ import annotations

import pytest
import torch

from vbon.config import TrainingConfig
from vbon.core.losses import rloo_advantages
from vbon.methods import METHODS, best_of_first_n_weights, method_family, method_label
from vbon.sampling.generate import completion_lengths, inverse_cdf_sample, sampling_probs
from vbon.training.engine import deepspeed_config
from vbon.training.task import Batch
from vbon.training.update import _row_weights, advantages, token_kl


def test_sampling_probs_temperature_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert torch.allclose(sampling_probs(logits, 1.0, 0, 1.0), logits.exp())
    hot = sampling_probs(logits, 2.0, 0, 1.0)
    assert torch.allclose(hot, torch.softmax(logits / 2, -1))
    top2 = sampling_probs(logits, 1.0, 2, 1.0)
    assert torch.allclose(top2, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]))
    # nucleus 0.7: 0.5 alone is below it, 0.5 + 0.25 crosses it, so two tokens stay
    nucleus = sampling_probs(logits, 1.0, 0, 0.7)
    assert torch.allclose(nucleus, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]))
    assert torch.allclose(sampling_probs(logits, 1.0, 0, 0.4), torch.tensor([[1.0, 0, 0, 0]]))


def test_inverse_cdf_sampler_draws_q_row_by_row_from_its_own_seed() -> None:
    q = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 1.0]])
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    draws = torch.stack([inverse_cdf_sample(q, gens) for _ in range(20_000)])
    freq = torch.stack([(draws[:, 0] == v).float().mean() for v in range(4)])
    assert torch.allclose(freq, q[0], atol=0.015) and freq[1] == 0  # zero mass never drawn
    assert (draws[:, 1] == 3).all()
    # a row's draws depend on its own generator only, not on its batch neighbours
    alone = [torch.Generator().manual_seed(1)]
    solo = torch.stack([inverse_cdf_sample(q[:1], alone) for _ in range(20_000)])
    assert torch.equal(solo[:, 0], draws[:, 0])
    # across blocks of the two-level search, and with a vocabulary that is not a block multiple
    wide = torch.zeros(1, 10)
    wide[0, [1, 4, 9]] = torch.tensor([0.2, 0.5, 0.3])
    g = [torch.Generator().manual_seed(3)]
    picks = torch.cat([inverse_cdf_sample(wide, g, block=4) for _ in range(20_000)])
    freq = torch.bincount(picks, minlength=10).float() / len(picks)
    assert torch.allclose(freq, wide[0], atol=0.015)


def test_completion_lengths_stop_after_eos_and_before_padding() -> None:
    eos, pad = 9, 0
    tokens = torch.tensor([[5, 6, 9, 7], [5, 6, 7, 8], [5, 0, 0, 0], [9, 0, 0, 0]])
    assert completion_lengths(tokens, eos, pad).tolist() == [3, 4, 1, 1]


def _batch(score: list[float]) -> Batch:
    mask = torch.tensor([[1.0, 1.0, 0.0]] * 4)
    return Batch(
        input_ids=torch.zeros(4, 3, dtype=torch.long),
        attention_mask=torch.ones(4, 3, dtype=torch.long),
        mask=mask,
        group_size=2,
        score=torch.tensor(score),
        ref_logprobs=torch.full((4, 3), -1.0),
    )


def test_rloo_advantages_are_leave_one_out_on_every_token() -> None:
    batch = _batch([1.0, 3.0, 0.0, 2.0])
    old_lp = torch.full((4, 3), -0.5)  # k1 = 0.5 per token, 1.0 per sequence
    t = TrainingConfig(estimator="rloo", samples_per_prompt=2)
    kl = token_kl(batch, old_lp, None, t.kl_estimator)
    adv, returns = advantages(batch, old_lp, kl, None, t, beta=0.5)
    expected = rloo_advantages((batch.score - 0.5).view(2, 2)).flatten()
    assert returns is None
    assert torch.allclose(adv, expected[:, None] * batch.mask)


def test_full_kl_term_and_row_weights_of_the_update() -> None:
    """`full` hands the exact per-token KL to the reward (and fails clearly without one); the
    loss's direct KL term weighs the policy's own rows 1 and pi_ref's rows k w_j (SNIS)."""
    batch = _batch([1.0, 3.0, 0.0, 2.0])
    old_lp = torch.tensor([[-0.5] * 3, [-1.5] * 3, [-1.0] * 3, [-1.0] * 3])
    exact = torch.rand(4, 3)
    assert token_kl(batch, old_lp, exact, "full") is exact
    assert torch.allclose(token_kl(batch, old_lp, None, "k1"), old_lp + 1.0)
    with pytest.raises(ValueError, match="kl_estimator: full"):
        token_kl(batch, old_lp, None, "full")
    assert (_row_weights(batch, old_lp) == 1).all()
    batch.from_reference = True
    w = _row_weights(batch, old_lp).view(2, 2)
    assert torch.allclose(w.sum(-1), torch.full((2,), 2.0))  # k per prompt
    log_ratio = ((old_lp - batch.ref_logprobs) * batch.mask).sum(-1)  # log pi(y)/pi_ref(y)
    assert w[0, 0] / w[0, 1] == pytest.approx(torch.exp(log_ratio[0] - log_ratio[1]).item())
    assert torch.allclose(w[1], torch.ones(2))  # equal ratios: equal weights


def test_ppo_advantages_are_whitened_gae_with_value_targets() -> None:
    batch = _batch([1.0, 3.0, 0.0, 2.0])
    values = torch.zeros(4, 3)
    t = TrainingConfig(gae_lambda=1.0)
    no_kl = torch.zeros(4, 3)
    adv, returns = advantages(batch, torch.full((4, 3), -1.0), no_kl, values, t, beta=0.5)
    on = batch.mask.bool()
    assert adv[on].mean().abs() < 1e-6 and (adv[~on] == 0).all()
    # no KL (pi = pi_ref), gamma = lambda = 1, V = 0: every token's return is the score
    assert torch.allclose(returns[:, 0], batch.score) and torch.allclose(returns[:, 1], batch.score)
    lam = advantages(batch, torch.full((4, 3), -1.0), no_kl, values, TrainingConfig(), 0.5)[1]
    assert torch.allclose(lam[:, 0], 0.95 * batch.score)  # lambda = 0.95 discounts the score


def test_deepspeed_config_follows_the_training_section() -> None:
    cfg = deepspeed_config(TrainingConfig(zero_stage=3, cpu_offload=True), 8, bf16=True)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["offload_optimizer"] == {"device": "cpu"} and zero["offload_param"]["device"]
    assert cfg["bf16"]["enabled"] and cfg["train_micro_batch_size_per_gpu"] == 8
    plain = deepspeed_config(TrainingConfig(zero_stage=2), 4, bf16=False)
    assert "offload_optimizer" not in plain["zero_optimization"] and not plain["bf16"]["enabled"]


def test_value_slice_lines_up_with_the_completion_tokens(tiny_path) -> None:
    """lm_task.forward: the value of completion token t is read at the position that predicts
    it, like its log-probability."""
    from vbon.config import ModelConfig
    from vbon.models import load_causal_lm
    from vbon.models.logprobs import forward_logprobs
    from vbon.training.lm_task import LanguageModelTask, PolicyModel

    lm = load_causal_lm(ModelConfig(name_or_path=str(tiny_path)))
    policy = PolicyModel(lm, value_head=True)
    torch.nn.init.normal_(policy.value_head.weight)
    ids = torch.tensor([[0, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8]])
    att = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    batch = Batch(ids, att, torch.ones(2, 3), group_size=1)
    task = LanguageModelTask.__new__(LanguageModelTask)
    task.cfg = type("C", (), {"sampling": type("S", (), {"temperature": 1.0})})()
    logprobs, values, _ = task.forward(policy, batch)
    _, full_values = policy(ids, att)
    assert torch.allclose(values, full_values[:, 2:5], atol=1e-5)
    assert torch.allclose(logprobs, forward_logprobs(lm, ids, att, 3, 1.0), atol=1e-5)


def test_full_kl_forward_is_the_exact_per_token_kl(tiny_path) -> None:
    """lm_task.forward with `ref_distributions`: the per-token KL over the whole vocabulary, 0
    where the policy is the reference, and differentiable (the loss's direct KL term)."""
    from vbon.config import ModelConfig
    from vbon.models import load_causal_lm
    from vbon.models.logprobs import forward_logprobs
    from vbon.training.lm_task import LanguageModelTask, PolicyModel

    ref = load_causal_lm(ModelConfig(name_or_path=str(tiny_path)))
    lm = load_causal_lm(ModelConfig(name_or_path=str(tiny_path)))
    ids = torch.tensor([[0, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8]])
    att = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    q = forward_logprobs(ref, ids, att, 3, 0.7, full=True)
    batch = Batch(ids, att, torch.ones(2, 3), group_size=1, ref_distributions=q)
    task = LanguageModelTask.__new__(LanguageModelTask)
    task.cfg = type("C", (), {"sampling": type("S", (), {"temperature": 0.7})})()
    policy = PolicyModel(lm, value_head=False)
    assert task.forward(policy, batch)[2].abs().max() < 1e-5

    with torch.no_grad():
        lm.lm_head.weight.add_(0.3 * torch.randn_like(lm.lm_head.weight))
    logprobs, _, kl = task.forward(policy, batch)
    p = forward_logprobs(lm, ids, att, 3, 0.7, full=True)
    want = (p.exp() * (p - q)).sum(-1)
    assert kl.shape == (2, 3) and torch.allclose(kl, want, atol=1e-5) and (kl > 1e-3).all()
    assert torch.allclose(logprobs, p.gather(-1, ids[:, -3:, None]).squeeze(-1), atol=1e-5)
    kl.sum().backward()
    assert lm.lm_head.weight.grad.abs().sum() > 0


def test_registry_labels_families_and_weights() -> None:
    assert method_label("vbon") == "vBoN (l1)" and method_family("vBoN (l1)") == "vBoN"
    assert method_label("kl_rl", beta=0.1) == "KL-RL beta=0.1"
    assert method_family("KL-RL beta=0.1") == "KL-RL"
    assert method_family("BoN distill") == "distill" and method_family("mine") == "other"
    assert method_label("bonbon") == "BoNBoN" and method_family("BoNBoN") == "BoNBoN"
    for method in METHODS.values():
        assert method.uses_rollouts or method.uses_cached or method.pairwise
        assert (method.kl is not None) == (method.score is not None)
        assert not (method.pairwise and method.uses_rollouts)
    w = best_of_first_n_weights(torch.tensor([[0.1, 0.9, 0.9, 5.0]]), 3)
    assert w.tolist() == [[0.0, 1.0, 0.0, 0.0]]  # the best of the first 3, first on ties
    with pytest.raises(ValueError, match="unknown method"):
        method_label("dpo")
