"""Batched sampling with per-row seeds, recording each token's log-probability.

`generate` draws every sequence with its own `torch.Generator` through the Gumbel-max trick
(argmax(log q + G) ~ q, q the temperature/top-k/top-p distribution of `warp_logits`): a row's
sample depends on its seed alone, not on which other prompts share its batch, nor on how many
actors ran. It is the one sampler of vbon: reference sampling, training rollouts, evaluation and
serving all draw through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from vbon.config import SamplingConfig


def row_seed(seed: int, prompt_id: int, sample: int) -> int:
    """A fixed 63-bit seed for sample `sample` of prompt `prompt_id`."""
    return (((seed * 1_000_003) ^ (prompt_id * 7_919)) * 104_729 + sample) % (2**63 - 1)


def render_prompt(tok: PreTrainedTokenizerBase, text: str, chat_template: bool) -> str:
    """The prompt as the model sees it: raw, or as one user turn of the tokenizer's chat template."""
    if not chat_template:
        return text
    messages = [{"role": "user", "content": text}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log q: temperature, then top-k (0 = off), then nucleus top-p (1 = off), renormalised."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = probs.cumsum(-1) - probs > top_p  # keeps the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    return torch.log_softmax(logits, dim=-1)


class SeededSampler(LogitsProcessor):
    """Picks each row's next token with its own generator and forces greedy decoding onto it."""

    def __init__(self, seeds: list[int], cfg: SamplingConfig) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.cfg = cfg

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        log_q = warp_logits(raw, self.cfg.temperature, self.cfg.top_k, self.cfg.top_p)
        u = torch.stack([torch.rand(raw.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        choice = (log_q.cpu() + gumbel).argmax(-1, keepdim=True).to(raw.device)
        forced = torch.full_like(scores, -torch.inf)
        return forced.scatter(-1, choice, 0.0)


@dataclass
class Completions:
    """Flat over rows (prompt-major: all M samples of a prompt are adjacent)."""

    texts: list[str]
    num_tokens: list[int]
    token_ids: list[list[int]]


def completion_lengths(tokens: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Tokens up to and including the first EOS; trailing PAD after a stop string excluded."""
    t = tokens.shape[1]
    pos = torch.arange(t)
    first_eos = torch.where(tokens == eos_id, pos, t).min(-1).values
    non_pad = torch.where(tokens != pad_id, pos, -1).max(-1).values
    return torch.minimum(first_eos + 1, non_pad + 1).clamp(0, t)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    seeds: list[list[int]],
    cfg: SamplingConfig,
    add_special_tokens: bool = True,
    synced_gpus: bool = False,
) -> Completions:
    """len(seeds[i]) samples of prompts[i], in one batched `generate` call. Prompts already
    rendered by a chat template carry their special tokens: pass add_special_tokens=False.
    `synced_gpus`: every rank of a ZeRO-3 group generates together (see the training loop)."""
    rows = [p for p, s in zip(prompts, seeds, strict=True) for _ in s]
    flat_seeds = [x for s in seeds for x in s]
    enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(
        model.device
    )
    sampler = SeededSampler(flat_seeds, cfg)
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        stop_strings=cfg.stop or None,
    )
    out = model.generate(
        **enc,
        generation_config=gen_cfg,
        logits_processor=LogitsProcessorList([sampler]),
        tokenizer=tok if cfg.stop else None,
        synced_gpus=synced_gpus,
    )
    tokens = out[:, enc.input_ids.shape[1] :].cpu()
    lengths = completion_lengths(tokens, tok.eos_token_id, tok.pad_token_id)
    texts = [
        tok.decode(row[:n], skip_special_tokens=True)
        for row, n in zip(tokens, lengths, strict=True)
    ]
    ids = [row[:n].tolist() for row, n in zip(tokens, lengths, strict=True)]
    return Completions(texts, lengths.tolist(), ids)
