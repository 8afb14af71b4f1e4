"""What the distributed trainer needs from a task: a policy to build, rollouts to score, and a
forward pass giving per-token log-probabilities.

A task owns everything but the optimisation: the frozen reference, the reward scorer, the
per-prompt reference rewards (for F_hat) and the cached reference samples. `LanguageModelTask` is
the real one; `ToyTask` runs the enumerable toy world through the same Ray Train + DeepSpeed loop.
The method (`vbon.methods.Method`) says how rollouts are scored and cached samples weighted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from vbon.methods import Method, WeightFn

HELDOUT_SUMS = ("prompts", "policy", "policy_sq", "bon")  # a rank's learning-curve sums


@dataclass
class Batch:
    """One worker's rollout: B = P prompts x k samples rows, prompt-major.

    `input_ids`/`attention_mask` are [B, S] (prompt then completion); `mask` is [B, T] and marks
    the completion tokens, the last T positions of `input_ids`. `ref_logprobs` [B, T] and `score`
    [B] (the reward the step maximises) are None for batches of cached samples, which carry
    `weights` [B] instead. `from_reference`: the rows were drawn from pi_ref, not from the policy
    (an RL batch of cached samples, importance-weighted by the update). `trunk` [B, S, H]: the
    reference's hidden state below the trained top blocks, when the policy shares it
    (`vbon.models.trunk`). `ref_distributions` [B, T, V]: pi_ref's log-probabilities over the
    vocabulary at each completion position, for `training.kl_estimator: full`. `baseline` [B, T]:
    the method's score of each completion prefix y_<t, for `training.prefix_baseline`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    group_size: int
    rewards: torch.Tensor | None = None
    score: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    from_reference: bool = False
    trunk: torch.Tensor | None = None
    ref_distributions: torch.Tensor | None = None
    baseline: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()
        }
        return Batch(**moved)


class Task(Protocol):
    num_prompts: int

    def setup(self, device: torch.device) -> None:
        """Load the scorer and the data (before any ZeRO-3 context exists)."""

    def load_reference(self, place: Callable[[nn.Module], nn.Module] = ...) -> None:
        """Load the frozen pi_ref (inside the ZeRO-3 context, when there is one). `place` puts a
        reference model where the trainer wants it (`vbon.training.engine.frozen_placement`);
        by default it stays whole on this worker."""

    def build_policy(self, value_head: bool) -> nn.Module:
        """The trainable module, initialised from the reference."""

    def rollout(
        self, policy: nn.Module, prompts: list[int], k: int, seed: int, synced: bool, method: Method
    ) -> Batch:
        """k samples per prompt from the current policy, scored by `method.score`. `synced`:
        ZeRO-3 generation (every rank generates together)."""

    def reference_rollout(
        self, prompts: list[int], k: int, seed: int, method: Method, pairs_of: int = 0
    ) -> Batch:
        """Like `rollout`, but k of each prompt's cached reference samples (drawn without
        replacement), scored against the other M - 1 (`from_reference=True`). With `pairs_of=N`
        only each group of N's best and worst are kept and scored (`core.losses.pair_columns`):
        2k/N rows per prompt, best, worst, best, ..."""

    def cached(self, prompts: list[int], weights: WeightFn, k: int, seed: int) -> Batch:
        """k weighted draws per prompt from its cached reference samples (`Batch.weights`)."""

    def heldout_win_rate(self, policy: nn.Module, rank: int, world: int, synced: bool) -> dict:
        """This rank's sums for the learning curve, keyed by `HELDOUT_SUMS`: its held-out prompts,
        and summed over them the policy's win rate against the reference, its square and BoN's."""

    def forward(
        self, policy: nn.Module, batch: Batch
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """log pi(y_t) on the completion tokens [B, T]; values [B, T] if the policy has them; the
        exact per-token KL to pi_ref [B, T] (`core.losses.kl_full`, with its graph) if the batch
        carries `ref_distributions`."""

    def export(self, policy: nn.Module, folder: Path) -> None:
        """Write the trained policy where users load it from."""
