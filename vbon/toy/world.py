"""Sequences of L tokens over a vocabulary of V: small enough (V^L outcomes) to enumerate.

A `TabularPolicy` is an autoregressive policy with one logit vector per prefix, so it can express
any distribution over sequences, pi_BoN included. Exact probabilities come from enumeration;
training only ever sees sampled sequences, as a language model would.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

RewardFn = Callable[[torch.Tensor], torch.Tensor]


def all_sequences(vocab: int, length: int) -> torch.Tensor:
    """Every sequence, [V^L, L], in lexicographic order."""
    grids = torch.meshgrid(*[torch.arange(vocab)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


def sequence_index(seqs: torch.Tensor, vocab: int) -> torch.Tensor:
    """Position of each sequence in `all_sequences` (base-V digits)."""
    powers = vocab ** torch.arange(seqs.shape[-1] - 1, -1, -1)
    return (seqs * powers).sum(-1)


class TabularPolicy(nn.Module):
    """pi(y) = prod_t softmax(theta[prefix(y_<t)])[y_t], one free logit vector per prefix."""

    def __init__(self, vocab: int, length: int, logits: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vocab, self.length = vocab, length
        n_prefixes = sum(vocab**t for t in range(length))
        if logits is None:
            logits = torch.zeros(n_prefixes, vocab, dtype=torch.float64)
        self.logits = nn.Parameter(logits.clone())
        self.register_buffer(
            "offsets", torch.tensor([sum(vocab**s for s in range(t)) for t in range(length)])
        )
        self.register_buffer("outcomes", all_sequences(vocab, length), persistent=False)

    def _prefix_ids(self, seqs: torch.Tensor) -> torch.Tensor:
        ids = torch.zeros_like(seqs)
        code = torch.zeros_like(seqs[:, 0])
        for t in range(self.length):
            ids[:, t] = self.offsets[t] + code
            code = code * self.vocab + seqs[:, t]
        return ids

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        return self.token_logprobs(seqs)

    def token_logprobs(self, seqs: torch.Tensor) -> torch.Tensor:
        """log pi(y_t | y_<t), [B, L]."""
        return torch.log_softmax(self.logits, dim=-1)[self._prefix_ids(seqs), seqs]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n i.i.d. sequences, [n, L]: drawn from the enumerated pi in one categorical draw,
        the same distribution as decoding token by token, at a fraction of the cost."""
        picks = torch.multinomial(self.probs(), n, replacement=True, generator=generator)
        return self.outcomes[picks]

    @torch.no_grad()
    def probs(self) -> torch.Tensor:
        """Exact pi over `all_sequences(V, L)` (the `outcomes`, enumerated once)."""
        return self.token_logprobs(self.outcomes).sum(-1).exp()


def random_reference(vocab: int, length: int, seed: int = 0, scale: float = 1.0) -> TabularPolicy:
    """A non-uniform reference policy with logits ~ scale * N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    n_prefixes = sum(vocab**t for t in range(length))
    logits = scale * torch.randn(n_prefixes, vocab, generator=g, dtype=torch.float64)
    return TabularPolicy(vocab, length, logits)


def distinct_reward(vocab: int, length: int, seed: int = 0) -> RewardFn:
    """r(y) = sum_t W[t, y_t] + eps(y) with Gaussian W and a tiny per-sequence jitter: no ties."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(length, vocab, generator=g, dtype=torch.float64)
    jitter = 1e-3 * torch.rand(vocab**length, generator=g, dtype=torch.float64)

    def reward(seqs: torch.Tensor) -> torch.Tensor:
        return weights[torch.arange(length), seqs].sum(-1) + jitter[sequence_index(seqs, vocab)]

    return reward


def leveled_reward(vocab: int, length: int, levels: int, seed: int = 0) -> RewardFn:
    """`distinct_reward` cut into `levels` levels of equally many sequences: heavy ties, as with
    a scorer that gives many texts the same value."""
    base = distinct_reward(vocab, length, seed)
    rank = torch.argsort(torch.argsort(base(all_sequences(vocab, length))))
    level = (rank * levels // vocab**length).to(torch.float64)

    def reward(seqs: torch.Tensor) -> torch.Tensor:
        return level[sequence_index(seqs, vocab)]

    return reward


def tied_reward(token: int = 0) -> RewardFn:
    """r(y) = number of occurrences of `token`: L+1 reward levels, many ties."""

    def reward(seqs: torch.Tensor) -> torch.Tensor:
        return (seqs == token).sum(-1).to(torch.float64)

    return reward


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) = sum p log(p / q), in nats, with 0 log 0 = 0."""
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return float(terms.sum())
