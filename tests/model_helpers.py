"""Small models built here for tests: a Llama-shaped causal LM from a config (random weights)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def llama(vocab: int = 97, layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()
