"""Continuous batching: sequences join and leave a running decode between steps (iteration-level
scheduling, as in Orca and vLLM), over Hugging Face's KV cache.

The batch holds one left-padded KV cache per layer, [B, heads, L, d], and each row's attention
mask [B, L]. A joining group is prefilled on its own (left-padded); its cache is left-padded to
the common length and stacked under the running rows. A row that ends is dropped from every
layer, and cache columns that no row attends to any more are cut off. Positions come from the
mask (`positions`), so a row's logits do not depend on its neighbours or its padding, up to float
rounding.
"""

from __future__ import annotations

import inspect

import torch
from torch.nn.functional import pad
from transformers import DynamicCache, PreTrainedModel

from vbon.models.logprobs import positions
from vbon.sampling.generate import last_logits_only


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """x zero-padded on the left of `dim` (counted from the end) to `width`."""
    short = width - x.shape[dim]
    if not short:
        return x
    return pad(x, [0, 0] * (-dim - 1) + [short, 0])


def _stack(a: DynamicCache, b: DynamicCache, width: int) -> DynamicCache:
    """The rows of a, then those of b, every layer left-padded to `width` positions."""
    layers = [
        (
            torch.cat([_left_pad(x.keys, width, -2), _left_pad(y.keys, width, -2)]),
            torch.cat([_left_pad(x.values, width, -2), _left_pad(y.values, width, -2)]),
        )
        for x, y in zip(a.layers, b.layers, strict=True)
    ]
    return DynamicCache(ddp_cache_data=layers)


class DecodeBatch:
    """The rows being decoded: their KV cache, attention mask and next-token logits [B, V]."""

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        params = inspect.signature(model.forward).parameters  # "cache" from transformers 5.2x on
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=model.device)
        self.logits = torch.zeros(0, 0, device=model.device)

    def __len__(self) -> int:
        return self.mask.shape[0]

    @torch.no_grad()
    def join(self, prompts: list[list[int]]) -> None:
        """Prefill new rows (token ids, each non-empty) after the running ones."""
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.pad_id, device=self.model.device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        cache = DynamicCache()
        logits = self._forward(ids, mask, cache)
        if self.cache is None:
            self.cache, self.mask, self.logits = cache, mask, logits
            return
        width = max(width, self.mask.shape[1])
        self.cache = _stack(self.cache, cache, width)
        self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(mask, width, -1)])
        self.logits = torch.cat([self.logits, logits])

    @torch.no_grad()
    def advance(self, tokens: torch.Tensor, keep: torch.Tensor) -> None:
        """Drop the rows not kept (`keep` [B] bool), then feed every other row its next token."""
        if not keep.any():
            self.cache, self.mask, self.logits = None, self.mask[:0, :0], self.logits[:0]
            return
        if not keep.all():
            rows = keep.nonzero()[:, 0].to(self.model.device)
            self.cache.batch_select_indices(rows)
            self.mask, tokens = self.mask[rows], tokens[keep]
        first = int(self.mask.any(0).long().argmax())  # columns before it are padding in every row
        if first:
            layers = [(x.keys[..., first:, :], x.values[..., first:, :]) for x in self.cache.layers]
            self.cache, self.mask = DynamicCache(ddp_cache_data=layers), self.mask[:, first:]
        self.mask = pad(self.mask, (0, 1), value=1)
        self.logits = self._forward(tokens[:, None].to(self.model.device), self.mask, self.cache)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions(mask)[:, -ids.shape[1] :],
            **{self.cache_arg: cache},
            use_cache=True,
            **last_logits_only(self.model),
        )
        return out.logits[:, -1].float()
