"""Per-token log-probabilities of completions under a causal LM at a sampling temperature."""

from __future__ import annotations

import torch
from torch import nn


def completion_distributions(
    logits: torch.Tensor, num_completion: int, temperature: float
) -> torch.Tensor:
    """log softmax(logits / T) over the vocabulary at each completion position, [B, T, V]:
    position t predicts token t+1."""
    return torch.log_softmax(logits[:, -num_completion - 1 : -1].float() / temperature, -1)


def completion_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, num_completion: int, temperature: float
) -> torch.Tensor:
    """log softmax(logits / T) of each completion token, [B, T]."""
    dist = completion_distributions(logits, num_completion, temperature)
    return dist.gather(-1, input_ids[:, -num_completion:, None]).squeeze(-1)


def last_positions(input_ids: torch.Tensor, n: int) -> torch.Tensor | int:
    """`logits_to_keep` for the last n positions, as an index tensor: HF then gathers a contiguous
    [B, n, H] copy for the LM head, where the int form's strided slice sends bf16 CPU matmuls
    down a path that copies the head weight per row (measured 8x slower). 0 keeps all."""
    width = input_ids.shape[1]
    return torch.arange(width - n, width, device=input_ids.device) if 0 < n < width else 0


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def forward_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion: int,
    temperature: float,
    full: bool = False,
) -> torch.Tensor:
    """`model_logprobs` without a graph (a frozen model's log-probabilities)."""
    return model_logprobs(model, input_ids, attention_mask, num_completion, temperature, full)


def model_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion: int,
    temperature: float,
    full: bool = False,
) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of the last `num_completion` tokens, [B, T]; with `full`, log pi(. |
    x, y_<t) over the whole vocabulary, [B, T, V]."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        logits_to_keep=last_positions(input_ids, num_completion + 1),
    ).logits
    return logits_to_logprobs(logits, input_ids, num_completion, temperature, full)


def logits_to_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    num_completion: int,
    temperature: float,
    full: bool = False,
) -> torch.Tensor:
    """`completion_logprobs` [B, T], or with `full` `completion_distributions` [B, T, V]."""
    if full:
        return completion_distributions(logits, num_completion, temperature)
    return completion_logprobs(logits, input_ids, num_completion, temperature)


def append_completions(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completions: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts [B, S] followed by right-padded completions: (input_ids,
    attention_mask, completion mask [B, T])."""
    lengths = torch.tensor([len(c) for c in completions])
    width = max(1, int(lengths.max()))
    tail = torch.full((len(completions), width), pad_id, dtype=prompt_ids.dtype)
    for i, c in enumerate(completions):
        tail[i, : len(c)] = torch.tensor(c, dtype=prompt_ids.dtype)
    mask = torch.arange(width) < lengths[:, None]
    input_ids = torch.cat([prompt_ids, tail.to(prompt_ids.device)], 1)
    attention_mask = torch.cat([prompt_mask, mask.long().to(prompt_mask.device)], 1)
    return input_ids, attention_mask, mask.float()


def encode_completions(
    tok, prompts: list[str], completions: list[list[int]], add_special_tokens: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`append_completions` after the rendered prompts, tokenised and left-padded: the one
    encoding of (prompt, completion) rows for every log-probability pass."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    return append_completions(
        enc["input_ids"], enc["attention_mask"], completions, tok.pad_token_id
    )
