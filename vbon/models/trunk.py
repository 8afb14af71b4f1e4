"""The frozen trunk shared by the policy and the reference under top-layer training.

When only the top k of L transformer blocks train, the policy's bottom L - k blocks (and its
embeddings) stay equal to the reference's, so both models compute the same hidden state
h_{L-k}(x, y) on a rollout. The reference's forward captures it, and the policy runs only its top
k blocks, final norm and head on it:

    log pi(y_t | x, y_<t) = log_softmax(head(top_k(h_{L-k})) / T)[y_t].

The bottom L - k blocks then run once per step instead of twice. `shares_trunk` checks on a real
batch that this gives the policy's own log-probabilities: models that transform `inputs_embeds`
further (GPT-2 adds position embeddings, Gemma scales them) fail it and keep the full forward.

On a rollout the policy has already computed h_{L-k} while it generated: the prompt's in the
prefill and each completion token's in the decoding step that fed it. `generation_trunk`
assembles those into the rollout batch's trunk, so neither model runs its bottom blocks again:
pi_ref's log-probabilities then cost only its top k blocks and head (`reference_logprobs_on`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vbon.models.logprobs import (
    completion_logprobs,
    last_positions,
    logits_to_logprobs,
    model_logprobs,
    positions,
)


def transformer_blocks(lm: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The stack of transformer blocks (the largest ModuleList): its parent, name and itself."""
    name, blocks = max(
        ((n, m) for n, m in lm.named_modules() if isinstance(m, nn.ModuleList)),
        key=lambda nm: len(nm[1]),
    )
    parent_name, _, attr = name.rpartition(".")
    return lm.get_submodule(parent_name), attr, blocks


@contextmanager
def block_inputs(lm: nn.Module, index: int) -> Iterator[list[torch.Tensor]]:
    """Collects the hidden state entering block `index` at every forward call, in order: one
    [B, S, H] tensor for a plain forward; the prefill and then one [B, 1, H] per decoding step
    inside `generate`."""
    _, _, blocks = transformer_blocks(lm)
    out: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        out.append((args[0] if args else kwargs["hidden_states"]).detach())

    handle = blocks[index].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield out
    finally:
        handle.remove()


def generation_trunk(
    chunks: list[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor | None:
    """The trunk [B, S, H] of a rollout batch (left-padded prompts, then completions; S = its
    width) from the hidden states `block_inputs` collected while `generate` drew it. The batch's
    last position is the only one the decoder never fed; its state feeds no completion token's
    log-probability (causal attention: nothing after it), so it is left zero, as are padded
    positions. None when the chunks do not cover the batch (another layout)."""
    trunk = torch.cat(chunks, 1)
    rows, width = attention_mask.shape
    if trunk.shape[0] != rows or trunk.shape[1] < width - 1:
        return None
    trunk = trunk[:, :width]
    if trunk.shape[1] < width:
        trunk = torch.nn.functional.pad(trunk, (0, 0, 0, width - trunk.shape[1]))
    return trunk * attention_mask[..., None].to(trunk.dtype)


@torch.no_grad()
def reference_logprobs_and_trunk(
    reference: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion: int,
    temperature: float,
    top_blocks: int,
    full: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_ref's log-probabilities of the last `num_completion` tokens [B, T] (with `full`, over
    the vocabulary [B, T, V]) and the hidden state entering its top `top_blocks` blocks [B, S, H]."""
    with block_inputs(reference, -top_blocks) as captured:
        logprobs = model_logprobs(
            reference, input_ids, attention_mask, num_completion, temperature, full
        )
    return logprobs, captured[0]


@torch.no_grad()
def reference_logprobs_on(
    reference: nn.Module,
    trunk: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion: int,
    temperature: float,
    top_blocks: int,
    full: bool = False,
) -> torch.Tensor:
    """pi_ref's log-probabilities of the last `num_completion` tokens [B, T] (with `full` [B, T,
    V]) from its top `top_blocks` blocks on a given trunk."""
    keep = last_positions(input_ids, num_completion + 1)
    logits = top_forward(reference, trunk, attention_mask, top_blocks, keep).logits
    return logits_to_logprobs(logits, input_ids, num_completion, temperature, full)


def top_forward(
    lm: nn.Module,
    trunk: torch.Tensor,
    attention_mask: torch.Tensor,
    top_blocks: int,
    logits_to_keep: torch.Tensor | int,
    output_hidden_states: bool = False,
):
    """The model's output with only its top `top_blocks` blocks run, on the trunk's hidden state
    (the block stack is swapped for its top for the duration of the call)."""
    parent, attr, blocks = transformer_blocks(lm)
    setattr(parent, attr, blocks[-top_blocks:])
    try:
        return lm(
            inputs_embeds=trunk,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            logits_to_keep=logits_to_keep,
            output_hidden_states=output_hidden_states,
            use_cache=False,
        )
    finally:
        setattr(parent, attr, blocks)


@torch.no_grad()
def shares_trunk(
    policy: nn.Module,
    reference: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    top_blocks: int,
    tol: float = 1e-4,
) -> bool:
    """Whether the policy's top blocks on the reference's trunk reproduce the policy's full
    forward on this batch (all positions' log-probabilities within `tol`)."""
    width = input_ids.shape[1] - 1
    _, trunk = reference_logprobs_and_trunk(
        reference, input_ids, attention_mask, width, 1.0, top_blocks
    )
    own = model_logprobs(policy, input_ids, attention_mask, width, 1.0)
    top = top_forward(policy, trunk, attention_mask, top_blocks, 0).logits
    top = completion_logprobs(top, input_ids, width, 1.0)
    valid = attention_mask[:, 1:].bool()
    return bool(((own - top).abs()[valid] <= tol).all())
