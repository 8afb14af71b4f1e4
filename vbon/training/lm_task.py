"""The language-model task: a Hugging Face causal LM as the policy, a frozen copy as pi_ref, the
workflow's reward scorer, and each training prompt's M reference rewards from the sampling stage.

The policy is the model at the sampling temperature T: log pi(y_t) = log_softmax(logits / T)[y_t],
for the policy and the reference alike (top-k and top-p only shape the rollouts).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from vbon.config import WorkflowConfig
from vbon.core.vbon_reward import policy_score
from vbon.models import load_causal_lm, load_tokenizer
from vbon.models.logprobs import completion_logprobs, forward_logprobs, positions
from vbon.rewards import build_scorer
from vbon.sampling.generate import completion_lengths, render_prompt
from vbon.sampling.stage import read_samples
from vbon.training.task import Batch


class PolicyModel(nn.Module):
    """The causal LM, plus a scalar value head on its last hidden state when PPO needs one."""

    def __init__(self, lm: PreTrainedModel, value_head: bool) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = None
        if value_head:
            head = nn.Linear(lm.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.value_head = head.to(lm.dtype)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of the last `logits_to_keep` positions (0: all), values of every position."""
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            output_hidden_states=self.value_head is not None,
            logits_to_keep=logits_to_keep,
        )
        values = None
        if self.value_head is not None:
            values = self.value_head(out.hidden_states[-1]).squeeze(-1).float()
        return out.logits, values


def select_trainable(lm: nn.Module, trainable: str, top_layers: int, lora_rank: int) -> nn.Module:
    """All weights; only the top `top_layers` transformer blocks (the largest ModuleList); or LoRA
    adapters on every linear layer (peft). Returns the module to train."""
    if trainable == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=lora_rank,
            lora_alpha=2 * lora_rank,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(lm, cfg)
    if trainable == "top_layers":
        blocks = max((m for m in lm.modules() if isinstance(m, nn.ModuleList)), key=len)
        lm.requires_grad_(False)
        for block in blocks[-top_layers:]:
            block.requires_grad_(True)
    return lm


class LanguageModelTask:
    """Rollouts from the policy on the training prompts of the sampling dataset."""

    def __init__(self, cfg: WorkflowConfig, samples_dir: str) -> None:
        self.cfg = cfg
        rows = read_samples(Path(samples_dir), split="train").to_pylist()
        if not rows:
            raise ValueError(
                f"{samples_dir} has no training prompts (data.test_fraction too high?)"
            )
        self.prompts = [r["prompt"] for r in rows]
        self.ref_completions = [r["completions"] for r in rows]
        self.ref_num_tokens = [r["num_tokens"] for r in rows]
        self.ref_rewards = [torch.tensor(r["rewards"], dtype=torch.float64) for r in rows]
        self.num_prompts = len(rows)

    def setup(self, device: torch.device) -> None:
        self.device = device
        self.tok = load_tokenizer(self.cfg.model)
        self.reference = load_causal_lm(self.cfg.model, device).requires_grad_(False)
        self.scorer = build_scorer(self.cfg.reward)

    def build_policy(self, value_head: bool) -> nn.Module:
        t = self.cfg.training
        lm = load_causal_lm(self.cfg.model, self.device)
        lm = select_trainable(lm, t.trainable, t.top_layers, t.lora_rank)
        return PolicyModel(lm, value_head).to(self.device)

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        chat = self.cfg.data.chat_template
        rendered = [render_prompt(self.tok, t, chat) for t in texts]
        return self.tok(rendered, return_tensors="pt", padding=True, add_special_tokens=not chat)

    @torch.no_grad()
    def rollout(
        self, policy: nn.Module, prompts: list[int], k: int, seed: int, synced: bool
    ) -> Batch:
        s = self.cfg.sampling
        texts = [self.prompts[i] for i in prompts for _ in range(k)]
        enc = self._encode(texts).to(self.device)
        torch.manual_seed(seed)
        out = policy.lm.generate(
            **enc,
            do_sample=True,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=self.tok.eos_token_id,
            stop_strings=s.stop or None,
            tokenizer=self.tok if s.stop else None,
            synced_gpus=synced,
        )
        completion = out[:, enc["input_ids"].shape[1] :].cpu()
        lengths = completion_lengths(completion, self.tok.eos_token_id, self.tok.pad_token_id)
        mask = (torch.arange(completion.shape[1]) < lengths[:, None]).float()
        completions = [
            self.tok.decode(row[:n], skip_special_tokens=True)
            for row, n in zip(completion, lengths, strict=True)
        ]
        rewards = torch.tensor(self.scorer.score(texts, completions), dtype=torch.float64)
        batch = Batch(
            input_ids=out.cpu(),
            attention_mask=torch.cat([enc["attention_mask"].cpu(), mask.long()], 1),
            mask=mask,
            group_size=k,
            rewards=rewards,
        ).to(self.device)
        batch.ref_logprobs = forward_logprobs(
            self.reference, batch.input_ids, batch.attention_mask, mask.shape[1], s.temperature
        )
        batch.score = self._score(prompts, k, rewards, batch.ref_logprobs, batch.mask)
        return batch

    def _score(self, prompts, k, rewards, ref_logprobs, mask) -> torch.Tensor:
        ref = nn.utils.rnn.pad_sequence([self.ref_rewards[i] for i in prompts], batch_first=True)
        ref_mask = nn.utils.rnn.pad_sequence(
            [torch.ones_like(self.ref_rewards[i], dtype=torch.bool) for i in prompts],
            batch_first=True,
        )
        seq_ref = (ref_logprobs * mask).sum(-1).double().cpu().view(len(prompts), k)
        t = self.cfg.training
        score = policy_score(
            t.algorithm,
            t.vbon_reward,
            rewards.view(len(prompts), k),
            ref,
            ref_mask,
            seq_ref,
            self.cfg.n,
        )
        return score.flatten().float().to(self.device)

    def best_of_n(self, prompts: list[int]) -> Batch:
        """The highest-reward of each prompt's first N reference samples (first index on ties),
        ending in EOS when the sample stopped before max_new_tokens."""
        n, max_new = self.cfg.n, self.cfg.sampling.max_new_tokens
        enc = self._encode([self.prompts[i] for i in prompts])
        targets = []
        for i in prompts:
            best = int(torch.argmax(self.ref_rewards[i][:n]))
            ids = self.tok(self.ref_completions[i][best], add_special_tokens=False)["input_ids"]
            if self.ref_num_tokens[i][best] < max_new:
                ids = [*ids, self.tok.eos_token_id]
            targets.append(torch.tensor(ids[:max_new] or [self.tok.eos_token_id]))
        completion = nn.utils.rnn.pad_sequence(
            targets, batch_first=True, padding_value=self.tok.pad_token_id
        )
        mask = torch.arange(completion.shape[1]) < torch.tensor([len(t) for t in targets])[:, None]
        return Batch(
            input_ids=torch.cat([enc["input_ids"], completion], 1),
            attention_mask=torch.cat([enc["attention_mask"], mask.long()], 1),
            mask=mask.float(),
            group_size=1,
        ).to(self.device)

    def forward(self, policy: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = batch.mask.shape[1]
        logits, values = policy(batch.input_ids, batch.attention_mask, t + 1)
        logprobs = completion_logprobs(logits, batch.input_ids, t, self.cfg.sampling.temperature)
        return logprobs, None if values is None else values[:, -t - 1 : -1]

    def export(self, policy: nn.Module, folder: Path) -> None:
        lm = policy.lm
        if hasattr(lm, "merge_and_unload"):
            lm = lm.merge_and_unload()
        lm.save_pretrained(folder, safe_serialization=True)
        self.tok.save_pretrained(folder)
