"""The toy world as a trainer task: one prompt, sequences sampled from a tabular policy, so the
distributed Ray Train + DeepSpeed loop can be checked against pi_BoN by enumeration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vbon.core.bon import bon_probs, win_rate_vs_ref
from vbon.core.losses import pair_columns
from vbon.methods import Method, WeightFn
from vbon.toy.train import ToyRun, score_fn
from vbon.toy.world import (
    TabularPolicy,
    all_sequences,
    distinct_reward,
    leveled_reward,
    random_reference,
)
from vbon.training.task import HELDOUT_SUMS, Batch


@dataclass
class ToyTask:
    """`random_reference(vocab, length, ref_seed)` with `distinct_reward(vocab, length,
    reward_seed)` (or, with `levels`, `leveled_reward`: heavy ties), scored by `run`'s method."""

    run: ToyRun
    vocab: int = 4
    length: int = 5
    ref_seed: int = 0
    reward_seed: int = 1
    levels: int | None = None
    num_prompts: int = 1

    def setup(self, device: torch.device) -> None:
        if self.levels is None:
            self.reward = distinct_reward(self.vocab, self.length, self.reward_seed)
        else:
            self.reward = leveled_reward(self.vocab, self.length, self.levels, self.reward_seed)

    def load_reference(self, place=None) -> None:
        """The reference is an enumerable table, not a model: `place` does not apply."""
        self.ref = random_reference(self.vocab, self.length, self.ref_seed)
        self.score = score_fn(self.run, self.ref, self.reward)

    def build_policy(self, value_head: bool) -> TabularPolicy:
        if value_head:
            raise ValueError("the toy task trains with training.estimator 'rloo' (no value head)")
        # float32: DeepSpeed all-reduces half, bfloat16 and float32 gradients only
        return TabularPolicy(self.vocab, self.length, self.ref.logits.detach().float())

    @torch.no_grad()
    def rollout(
        self, policy, prompts: list[int], k: int, seed: int, synced: bool, method: Method
    ) -> Batch:
        return self._scored(policy.sample(len(prompts) * k, torch.Generator().manual_seed(seed)), k)

    @torch.no_grad()
    def reference_rollout(
        self, prompts: list[int], k: int, seed: int, method: Method, pairs_of: int = 0
    ) -> Batch:
        """k fresh reference samples per prompt: the toy world's cache is pi_ref itself."""
        seqs = self.ref.sample(len(prompts) * k, torch.Generator().manual_seed(seed))
        if pairs_of:
            groups = seqs.view(len(prompts), k, -1)
            cols = pair_columns(self.reward(seqs).view(len(prompts), k), pairs_of)
            seqs = groups[torch.arange(len(prompts))[:, None], cols].flatten(0, 1)
            k = cols.shape[1]
        batch = self._scored(seqs, k)
        batch.from_reference = True
        return batch

    def _scored(self, seqs: torch.Tensor, k: int) -> Batch:
        return Batch(
            input_ids=seqs,
            attention_mask=torch.ones_like(seqs),
            mask=torch.ones(seqs.shape),
            group_size=k,
            rewards=self.reward(seqs).float(),
            score=self.score(seqs).float(),
            ref_logprobs=self.ref.token_logprobs(seqs).float(),
        )

    def cached(self, prompts: list[int], weights: WeightFn, k: int, seed: int) -> Batch:
        """One group of k reference samples per prompt, weighted as the method says."""
        seqs = self.ref.sample(len(prompts) * k, torch.Generator().manual_seed(seed))
        w = weights(self.reward(seqs).view(len(prompts), k), self.run.n).flatten()
        return Batch(
            input_ids=seqs,
            attention_mask=torch.ones_like(seqs),
            mask=torch.ones(seqs.shape),
            group_size=k,
            weights=w.float(),
        )

    def heldout_win_rate(self, policy, rank: int, world: int, synced: bool) -> dict:
        """Exact win rates against the reference by enumeration (rank 0 counts the one prompt)."""
        if rank:
            return dict.fromkeys(HELDOUT_SUMS, 0.0)
        p = self.ref.probs()
        r = self.reward(all_sequences(self.vocab, self.length))
        bon = bon_probs(p, r, self.run.n)
        won = float(win_rate_vs_ref(policy.probs().double(), p, r))
        return {
            "prompts": 1.0,
            "policy": won,
            "policy_sq": won**2,
            "bon": float(win_rate_vs_ref(bon, p, r)),
        }

    def forward(self, policy, batch: Batch) -> tuple[torch.Tensor, None, None]:
        return policy(batch.input_ids), None, None

    def export(self, policy: TabularPolicy, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(policy.logits.detach().cpu(), folder / "logits.pt")
