"""The method registry: one entry per training method, read by config validation, the trainer,
the workflow, evaluation labels, plots, the toy harness and the benches.

A method learns from the policy's own rollouts (an RL score with a KL coefficient), from the
cached reference samples (a weight per cached sample: a forward-KL / maximum-likelihood target),
from both (`jeffreys`), or from best/worst pairs of cached samples (`bonbon`, whose IPO target
is the score difference over the KL coefficient). Adding a method is one entry here plus its tests.

Every score takes per-sample raw rewards [P, k], the reference masses (P_lt, P_le) of those
rewards (exact in the toy world, estimated from the M reference rewards for text), the
sequence log-probability under pi_ref [P, k] and N; every cached weight takes a prompt's M
cached rewards [P, M] and N and returns weights summing to 1 per prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vbon.core.bon import bon_pick_probs
from vbon.core.vbon_reward import beta_from_n, exact_reward, l1_reward

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
WeightFn = Callable[[torch.Tensor, int], torch.Tensor]


def _raw(rewards, p_lt, p_le, ref_seq_logprob, n):
    return rewards


def _l1(rewards, p_lt, p_le, ref_seq_logprob, n):
    return l1_reward(p_lt, p_le, n)


def _exact(rewards, p_lt, p_le, ref_seq_logprob, n):
    return exact_reward(p_lt, p_le, ref_seq_logprob, n)


def best_of_first_n_weights(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """BoN-SFT's target: weight 1 on the best of the first N cached samples (first on ties)."""
    best = rewards[..., :n].argmax(-1, keepdim=True)
    return torch.zeros_like(rewards, dtype=torch.float64).scatter(-1, best, 1.0)


@dataclass(frozen=True)
class Method:
    """One training method.

    `score`: the sequence reward its RL step maximises (None: no rollouts).
    `kl`: "bon" for beta = 1/(N-1), "config" for `training.beta`, None without an RL term.
    `cached_weights`: the weight of each cached reference sample in its forward-KL term (None: no
    cached term). `pairwise`: it learns from the best and worst of groups of N cached samples,
    with `score` / beta as the log-ratio target (no rollouts). `family` groups methods in plots.
    """

    name: str
    label: str
    family: str
    score: ScoreFn | None = None
    kl: str | None = None
    cached_weights: WeightFn | None = None
    pairwise: bool = False

    @property
    def uses_rollouts(self) -> bool:
        return self.score is not None and not self.pairwise

    @property
    def uses_cached(self) -> bool:
        return self.cached_weights is not None

    def beta(self, n: int, configured: float | None) -> float | None:
        """The KL coefficient of its RL term."""
        if self.kl == "bon":
            return beta_from_n(n)
        return configured if self.kl == "config" else None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("vbon", "vBoN (l1)", "vBoN", score=_l1, kl="bon"),
        Method("vbon_exact", "vBoN (exact)", "vBoN", score=_exact, kl="bon"),
        Method("kl_rl", "KL-RL", "KL-RL", score=_raw, kl="config"),
        Method("bon_sft", "BoN-SFT", "BoN-SFT", cached_weights=best_of_first_n_weights),
        Method("bon_distill", "BoN distill", "distill", cached_weights=bon_pick_probs),
        Method("jeffreys", "Jeffreys", "vBoN", score=_l1, kl="bon", cached_weights=bon_pick_probs),
        Method("bonbon", "BoNBoN", "BoNBoN", score=_l1, kl="bon", pairwise=True),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def method_label(
    name: str, beta: float | None = None, mix: float | None = None, warm_start: int = 0
) -> str:
    """The display label of a trained policy, e.g. 'vBoN (l1)', 'KL-RL beta=0.05',
    'Jeffreys lambda=0.5', with ' + distill warm start' when it began with BoN distillation."""
    method = get_method(name)
    label = method.label
    if method.kl == "config" and beta is not None:
        label += f" beta={beta:g}"
    if method.uses_rollouts and method.uses_cached and mix is not None:
        label += f" lambda={mix:g}"
    return label + (" + distill warm start" if warm_start else "")


def method_family(label: str) -> str:
    """The family of a label made by `method_label` (the plot's marker); 'other' if none."""
    for method in sorted(METHODS.values(), key=lambda m: -len(m.label)):
        if label.startswith(method.label):
            return method.family
    return "other"
