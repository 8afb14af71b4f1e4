"""`builtin:tiny`: a 2-layer GPT-2 with a byte-level BPE tokenizer, both built here from text the
project authors (vbon.data.movie_reviews). A few hundred language-modelling steps make it write
review-like text, so rewards on its samples vary. Built once into the cache, then loaded through
the ordinary `from_pretrained` path like any hub model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from vbon.data.movie_reviews import corpus
from vbon.models.cache import build_once, cache_dir

EOS = "<|endoftext|>"
VOCAB_SIZE = 512
CONTEXT = 128


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with one special token used as BOS, EOS and PAD."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=CONTEXT
    )


def build_model(vocab_size: int, eos_id: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return GPT2LMHeadModel(config)


def pretrain(
    model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, texts: list[str], steps: int
) -> None:
    """Plain next-token training on `texts` (batch 32, AdamW 3e-3)."""
    ids = tok([t + EOS for t in texts], padding=True, return_tensors="pt", truncation=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(texts), (32,), generator=g)
        input_ids, mask = ids.input_ids[rows], ids.attention_mask[rows]
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def write_tiny(folder: Path, steps: int = 300) -> None:
    """Build, train and save the tiny model and tokenizer into `folder` (safetensors)."""
    torch.manual_seed(0)
    texts = corpus()
    tok = build_tokenizer(texts)
    model = build_model(len(tok), tok.eos_token_id)
    pretrain(model, tok, texts, steps)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def ensure_tiny() -> Path:
    """The cached folder of `builtin:tiny`, built on first use (a few seconds)."""
    return build_once(cache_dir() / "models" / "tiny-gpt2-v1", write_tiny)
