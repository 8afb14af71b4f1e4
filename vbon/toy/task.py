"""The toy world as a trainer task: one prompt, sequences sampled from a tabular policy, so the
distributed Ray Train + DeepSpeed loop can be checked against pi_BoN by enumeration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vbon.toy.train import ToyRun, score_fn
from vbon.toy.world import TabularPolicy, distinct_reward, random_reference
from vbon.training.task import Batch


@dataclass
class ToyTask:
    """`random_reference(vocab, length, ref_seed)` with `distinct_reward(vocab, length,
    reward_seed)`, scored as `run` says (vbon_exact, vbon_l1 or kl_rl)."""

    run: ToyRun
    vocab: int = 4
    length: int = 5
    ref_seed: int = 0
    reward_seed: int = 1
    num_prompts: int = 1

    def setup(self, device: torch.device) -> None:
        self.ref = random_reference(self.vocab, self.length, self.ref_seed)
        self.reward = distinct_reward(self.vocab, self.length, self.reward_seed)
        self.score = score_fn(self.run, self.ref, self.reward)

    def build_policy(self, value_head: bool) -> TabularPolicy:
        if value_head:
            raise ValueError("the toy task trains with training.optimizer 'rloo' (no value head)")
        # float32: DeepSpeed all-reduces half, bfloat16 and float32 gradients only
        return TabularPolicy(self.vocab, self.length, self.ref.logits.detach().float())

    @torch.no_grad()
    def rollout(self, policy, prompts: list[int], k: int, seed: int, synced: bool) -> Batch:
        seqs = policy.sample(len(prompts) * k, torch.Generator().manual_seed(seed))
        return Batch(
            input_ids=seqs,
            attention_mask=torch.ones_like(seqs),
            mask=torch.ones(seqs.shape),
            group_size=k,
            rewards=self.reward(seqs).float(),
            score=self.score(seqs).float(),
            ref_logprobs=self.ref.token_logprobs(seqs).float(),
        )

    def best_of_n(self, prompts: list[int]) -> Batch:
        raise ValueError("the toy task trains RL methods only; BoN-SFT runs in vbon.toy.train")

    def forward(self, policy, batch: Batch) -> tuple[torch.Tensor, None]:
        return policy(batch.input_ids), None

    def export(self, policy: TabularPolicy, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(policy.logits.detach().cpu(), folder / "logits.pt")
