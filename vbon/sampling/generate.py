"""Batched sampling with per-row seeds, recording each token's log-probability.

`generate` draws every sequence with its own `torch.Generator` by inversion: one uniform u per
row and step, and the first token whose cumulative probability under q (the temperature / top-k /
top-p distribution of `sampling_probs`) exceeds u. A row's sample depends on its seed alone, not on
which other prompts share its batch, nor on how many actors ran; one random number per token
keeps the sampler cheap next to the model. It is the one sampler of vbon: reference sampling,
training rollouts and evaluation draw through `generate`, and serving's continuous batch
(`vbon.serving.engine`) through `sampling_probs` and `inverse_cdf_sample`.
"""

from __future__ import annotations

import inspect
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


def sampling_probs(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """q: softmax(logits / temperature) after top-k (0 = off), then nucleus top-p (1 = off)."""
    if temperature != 1.0:
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
    return torch.softmax(logits, dim=-1)


class SeededSampler(LogitsProcessor):
    """Picks each row's next token with its own generator and forces greedy decoding onto it."""

    def __init__(self, seeds: list[int], cfg: SamplingConfig) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.cfg = cfg

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        q = sampling_probs(scores.float(), self.cfg.temperature, self.cfg.top_k, self.cfg.top_p)
        choice = inverse_cdf_sample(q.cpu(), self.generators).to(scores.device)
        return scores.fill_(-torch.inf).scatter_(-1, choice[:, None], 0.0)


def inverse_cdf_sample(
    q: torch.Tensor, generators: list[torch.Generator], block: int = 1024
) -> torch.Tensor:
    """One token per row of q [B, V]: the first index whose cumulative probability exceeds
    u * total, u ~ U[0, 1) from that row's generator. The search runs in two levels (block sums,
    then one block's cumulative sum, in float64), so a step costs one pass over q. A token of
    zero probability is never picked: the cumulative sum does not rise there."""
    rows, vocab = q.shape
    blocks = (torch.nn.functional.pad(q, (0, -vocab % block)) if vocab % block else q).view(
        rows, -1, block
    )
    block_cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    target = u * block_cdf[:, -1]
    b = torch.searchsorted(block_cdf, target[:, None], right=True).clamp_max(blocks.shape[1] - 1)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp_min(0)), 0.0)[:, 0]
    inner = blocks[torch.arange(rows), b[:, 0]].double().cumsum(-1)
    rest = torch.minimum(target - before, inner[:, -1] * (1 - 1e-12))
    j = torch.searchsorted(inner, rest[:, None], right=True)
    return (b * block + j)[:, 0]


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


def last_logits_only(model: PreTrainedModel) -> dict:
    """Each step's logits at the last position only, as an index tensor (see
    `vbon.models.logprobs.last_positions`: the int form is 8x slower in bf16 on CPU)."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return {}
    return {"logits_to_keep": torch.tensor([-1], device=model.device)}


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
    ids = tok(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    return generate_from_ids(model, tok, ids, seeds, cfg, synced_gpus)


@torch.no_grad()
def generate_from_ids(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    seeds: list[list[int]],
    cfg: SamplingConfig,
    synced_gpus: bool = False,
) -> Completions:
    """`generate` on prompts given as token ids (each non-empty), left-padded into one batch."""
    rows = [{"input_ids": p} for p, s in zip(prompt_ids, seeds, strict=True) for _ in s]
    flat_seeds = [x for s in seeds for x in s]
    enc = tok.pad(rows, padding=True, return_tensors="pt").to(model.device)
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
        **last_logits_only(model),
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
