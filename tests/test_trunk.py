"""The frozen trunk shared by the policy and the reference under top-layer training."""

from __future__ import annotations

from pathlib import Path

import torch
from model_helpers import llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from vbon.config import SamplingConfig
from vbon.models.logprobs import append_completions, model_logprobs
from vbon.models.trunk import (
    block_inputs,
    generation_trunk,
    reference_logprobs_and_trunk,
    reference_logprobs_on,
    shares_trunk,
    top_forward,
)
from vbon.sampling.generate import generate, row_seed
from vbon.training.lm_task import select_trainable


def _batch(vocab: int = 97) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the second left-padded by 3."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (2, 12), generator=g)
    att = torch.ones_like(ids)
    att[1, :3] = 0
    return ids, att


def _pair(model_fn) -> tuple[torch.nn.Module, torch.nn.Module]:
    ref = model_fn().requires_grad_(False)
    policy = select_trainable(model_fn(), "top_layers", 2, 0)
    return policy, ref


def test_top_blocks_on_the_reference_trunk_give_the_policy_logprobs_and_gradients() -> None:
    policy, ref = _pair(llama)
    ids, att = _batch()
    assert shares_trunk(policy, ref, ids, att, 2)
    ref_lp, trunk = reference_logprobs_and_trunk(ref, ids, att, 5, 0.7, 2)
    assert torch.allclose(ref_lp, model_logprobs(ref, ids, att, 5, 0.7), atol=1e-6)

    full = model_logprobs(policy, ids, att, 5, 0.7)
    full.sum().backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    policy.zero_grad()
    logits = top_forward(policy, trunk, att, 2, 0).logits
    top = torch.log_softmax(logits[:, -6:-1].float() / 0.7, -1).gather(-1, ids[:, -5:, None])
    top.sum().backward()
    assert torch.allclose(full, top.squeeze(-1), atol=1e-5)
    assert grads and all(
        torch.allclose(p.grad, grads[n], atol=1e-5)
        for n, p in policy.named_parameters()
        if p.requires_grad
    )
    assert len(policy.model.layers) == 4  # the block stack is restored after the call


def test_a_moved_trunk_or_an_embedding_transform_is_detected(tiny_path: Path) -> None:
    policy, ref = _pair(llama)
    with torch.no_grad():
        policy.model.layers[0].mlp.down_proj.weight.add_(0.5)  # the trunks differ
    ids, att = _batch()
    assert not shares_trunk(policy, ref, ids, att, 2)

    gpt2 = lambda: AutoModelForCausalLM.from_pretrained(tiny_path, use_safetensors=True)  # noqa: E731
    policy, ref = _pair(gpt2)  # GPT-2 adds position embeddings to `inputs_embeds`
    ids, att = _batch(vocab=AutoTokenizer.from_pretrained(tiny_path).vocab_size)
    assert not shares_trunk(policy, ref, ids, att, 2)


def test_the_trunk_collected_while_generating_is_the_reference_trunk(llama_path: Path) -> None:
    """The hidden states the policy computed as it decoded (prefill, then one per step) are the
    trunk a fresh forward of the rollout batch gives, and pi_ref's top blocks on them give its
    log-probabilities: rows of different lengths, an early EOS and left padding included."""
    tok = AutoTokenizer.from_pretrained(llama_path, padding_side="left")
    policy, ref = _pair(lambda: AutoModelForCausalLM.from_pretrained(llama_path))
    with torch.no_grad():  # EOS likely enough that some rows stop early (the head is not trunk)
        for model in (policy, ref):
            model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight.mean(0) + 2.0
    cfg = SamplingConfig(max_new_tokens=7, temperature=1.0, top_p=1.0, top_k=0)
    prompts = ["the film was", "a long and quiet opening scene of the"]
    seeds = [[row_seed(0, i, j) for j in range(3)] for i in range(2)]
    with block_inputs(policy, -2) as chunks:
        out = generate(policy, tok, prompts, seeds, cfg)
    assert len(set(out.num_tokens)) > 1  # some rows stopped at EOS
    enc = tok([p for p in prompts for _ in range(3)], return_tensors="pt", padding=True)
    ids, att, mask = append_completions(
        enc["input_ids"], enc["attention_mask"], out.token_ids, tok.pad_token_id
    )
    trunk = generation_trunk(chunks, att)
    assert trunk is not None and trunk.shape[:2] == ids.shape
    width = mask.shape[1]
    _, fresh = reference_logprobs_and_trunk(ref, ids, att, width, 1.0, 2)
    used = att.bool().clone()
    used[:, -1] = False  # the last token's state is never fed, nor needed
    assert torch.allclose(trunk[used], fresh[used], atol=1e-5)
    on_trunk = reference_logprobs_on(ref, trunk, ids, att, width, 1.0, 2)
    own = model_logprobs(ref, ids, att, width, 1.0)
    assert torch.allclose(on_trunk[mask.bool()], own[mask.bool()], atol=1e-5)
    assert generation_trunk(chunks, att[:2]) is None  # another batch's layout is refused
