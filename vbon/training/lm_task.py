"""The language-model task: a Hugging Face causal LM as the policy, a frozen copy as pi_ref, the
workflow's reward scorer, and each training prompt's M reference rewards from the sampling stage.

The policy is the model at the sampling temperature T: log pi(y_t) = log_softmax(logits / T)[y_t],
for the policy and the reference alike (top-k and top-p only shape the rollouts).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from vbon.config import WorkflowConfig
from vbon.core.cdf import empirical_masses
from vbon.core.losses import kl_full, pair_columns
from vbon.core.metrics import bon_win_rate, win_rate_vs_samples
from vbon.methods import Method, WeightFn
from vbon.models import load_causal_lm, load_tokenizer
from vbon.models.logprobs import (
    completion_distributions,
    encode_completions,
    forward_logprobs,
    last_positions,
    positions,
)
from vbon.models.trunk import (
    block_inputs,
    generation_trunk,
    reference_logprobs_and_trunk,
    reference_logprobs_on,
    shares_trunk,
    top_forward,
    transformer_blocks,
)
from vbon.rewards import RewardScorer, build_scorer
from vbon.sampling.generate import generate, render_prompt, row_seed
from vbon.sampling.stage import read_samples
from vbon.training.task import HELDOUT_SUMS, Batch
from vbon.training.timing import phase

HELDOUT_SEED = 5_555_555  # the learning curve's samples: fixed, distinct from every other seed


def _pairs(picks: torch.Tensor) -> list[tuple[int, int]]:
    """(prompt, sample) index pairs of a [P, k] pick matrix, prompt-major."""
    return [(i, int(j)) for i, row in enumerate(picks) for j in row]


def prefix_rewards(
    scorer: RewardScorer, tok, prompts: list[str], token_ids: list[list[int]], width: int
) -> torch.Tensor:
    """r(x, y_<t) for every completion y and t < min(|y|, width), in one scorer call: [B, width]
    float64, 0 past each completion. t = 0 scores the empty completion."""
    texts, where = [], []
    for b, ids in enumerate(token_ids):
        for t in range(min(len(ids), width)):
            texts.append(tok.decode(ids[:t], skip_special_tokens=True))
            where.append((b, t))
    out = torch.zeros(len(token_ids), width, dtype=torch.float64)
    if where:
        scored = scorer.score([prompts[b] for b, _ in where], texts)
        out[tuple(torch.tensor(where).T)] = torch.tensor(scored, dtype=torch.float64)
    return out


class PolicyModel(nn.Module):
    """The causal LM, plus a scalar value head on its last hidden state when PPO needs one.
    `top_blocks` > 0: forwards given the reference's trunk run only the top blocks
    (`vbon.models.trunk`)."""

    def __init__(self, lm: PreTrainedModel, value_head: bool) -> None:
        super().__init__()
        self.lm = lm
        self.top_blocks = 0
        self.value_head = None
        if value_head:
            head = nn.Linear(lm.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.value_head = head.to(lm.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int = 0,
        trunk: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of the last `logits_to_keep` positions (0: all), values of every position;
        from the trunk's hidden state when it is given."""
        keep = last_positions(input_ids, logits_to_keep)
        hidden = self.value_head is not None
        if trunk is not None and self.top_blocks:
            out = top_forward(self.lm, trunk, attention_mask, self.top_blocks, keep, hidden)
        else:
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions(attention_mask),
                output_hidden_states=hidden,
                logits_to_keep=keep,
                use_cache=False,
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
        _, _, blocks = transformer_blocks(lm)
        lm.requires_grad_(False)
        for block in blocks[-top_layers:]:
            block.requires_grad_(True)
    return lm


class LanguageModelTask:
    """Rollouts from the policy on the training prompts of the sampling dataset, the cached
    reference samples of those prompts, and held-out prompts for the learning curve."""

    def __init__(self, cfg: WorkflowConfig, samples_dir: str) -> None:
        self.cfg = cfg
        rows = read_samples(Path(samples_dir), split="train").to_pylist()
        if not rows:
            raise ValueError(
                f"{samples_dir} has no training prompts (data.test_fraction too high?)"
            )
        self.rows = rows
        self.num_prompts = len(rows)
        self.heldout = read_samples(Path(samples_dir), split="test").to_pylist()
        self.heldout = self.heldout[: cfg.training.eval_prompts]

    def setup(self, device: torch.device) -> None:
        self.device = device
        self.tok = load_tokenizer(self.cfg.model)
        self.scorer = build_scorer(self.cfg.reward)
        self.top_blocks = 0  # > 0 once the policy shares the reference's frozen trunk

    def load_reference(self, place: Callable[[nn.Module], nn.Module] = lambda m: m) -> None:
        self.reference = place(load_causal_lm(self.cfg.model, self.device).requires_grad_(False))

    def build_policy(self, value_head: bool) -> nn.Module:
        t = self.cfg.training
        lm = load_causal_lm(self.cfg.model, self.device)
        lm = select_trainable(lm, t.trainable, t.top_layers, t.lora_rank)
        policy = PolicyModel(lm, value_head).to(self.device)
        if t.trainable == "top_layers" and t.zero_stage != 3 and self._trunk_matches(lm):
            policy.top_blocks = self.top_blocks = t.top_layers
        return policy

    def _trunk_matches(self, lm: nn.Module) -> bool:
        """`shares_trunk` on two cached samples of different lengths (padding included)."""
        rows = self.rows[:2]
        batch = self._batch(rows, 1, [r["token_ids"][0] or [self.tok.eos_token_id] for r in rows])
        batch = batch.to(self.device)
        k = self.cfg.training.top_layers
        return shares_trunk(lm, self.reference, batch.input_ids, batch.attention_mask, k)

    def _batch(self, rows: list[dict], k: int, completions: list[list[int]], **fields) -> Batch:
        """Prompts (each repeated k times) followed by the given completion token ids."""
        chat = self.cfg.data.chat_template
        rendered = [render_prompt(self.tok, r["prompt"], chat) for r in rows for _ in range(k)]
        ids, att, mask = encode_completions(self.tok, rendered, completions, not chat)
        return Batch(input_ids=ids, attention_mask=att, mask=mask, group_size=k, **fields)

    def _sample(self, policy: nn.Module, rows: list[dict], k: int, seed: int, synced: bool):
        """k samples per row from the policy, through the one seeded sampler, and their rewards."""
        chat = self.cfg.data.chat_template
        rendered = [render_prompt(self.tok, r["prompt"], chat) for r in rows]
        seeds = [[row_seed(seed, r["prompt_id"], j) for j in range(k)] for r in rows]
        with phase("generate"):
            out = generate(
                policy.lm,
                self.tok,
                rendered,
                seeds,
                self.cfg.sampling,
                not chat,
                synced_gpus=synced,
            )
        texts = [r["prompt"] for r in rows for _ in range(k)]
        with phase("reward"):
            rewards = torch.tensor(self.scorer.score(texts, out.texts), dtype=torch.float64)
        return out, rewards.view(len(rows), k)

    @torch.no_grad()
    def rollout(
        self, policy: nn.Module, prompts: list[int], k: int, seed: int, synced: bool, method: Method
    ) -> Batch:
        rows = [self.rows[i] for i in prompts]
        # the policy's own trunk, collected as it generates: no model runs its bottom blocks again
        capture = block_inputs(policy.lm, -self.top_blocks) if self.top_blocks else nullcontext()
        with capture as chunks:
            out, rewards = self._sample(policy, rows, k, seed, synced)
        ref, ref_mask = self._reference_rewards(rows)
        against = ref.repeat_interleave(k, 0), ref_mask.repeat_interleave(k, 0)
        return self._scored(rows, k, out.token_ids, rewards, against, method, chunks)

    @torch.no_grad()
    def reference_rollout(
        self, prompts: list[int], k: int, seed: int, method: Method, pairs_of: int = 0
    ) -> Batch:
        g = torch.Generator().manual_seed(seed)
        rows = [self.rows[i] for i in prompts]
        ref, ref_mask = self._reference_rewards(rows)
        picks = torch.stack([torch.randperm(int(m), generator=g)[:k] for m in ref_mask.sum(-1)])
        if pairs_of:
            picks = picks.gather(1, pair_columns(ref.gather(1, picks), pairs_of))
            k = picks.shape[1]
        rewards = ref.gather(1, picks)
        others = ref_mask.clone().unsqueeze(1).repeat(1, k, 1)  # each pick's own reward left out
        others.scatter_(-1, picks.unsqueeze(-1), False)
        against = ref.repeat_interleave(k, 0), others.reshape(-1, ref.shape[1])
        ids = [rows[i]["token_ids"][j] or [self.tok.eos_token_id] for i, j in _pairs(picks)]
        batch = self._scored(rows, k, ids, rewards, against, method)
        batch.from_reference = True
        return batch

    @staticmethod
    def _reference_rewards(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt's M reference rewards [P, M_max], padded, and their mask."""
        ref = nn.utils.rnn.pad_sequence(
            [torch.tensor(r["rewards"], dtype=torch.float64) for r in rows], batch_first=True
        )
        ref_mask = nn.utils.rnn.pad_sequence(
            [torch.ones(len(r["rewards"]), dtype=torch.bool) for r in rows], batch_first=True
        )
        return ref, ref_mask

    def _scored(self, rows, k, token_ids, rewards, against, method: Method, chunks=None):
        """The RL batch: completions after their prompts, pi_ref's log-probabilities, the score.
        `against`: each row's reference rewards and their mask [B, M], the masses' reference;
        `chunks`: the trunk's hidden states collected during generation, if any."""
        batch = self._batch(rows, k, token_ids, rewards=rewards.flatten()).to(self.device)
        if chunks:
            batch.trunk = generation_trunk(chunks, batch.attention_mask)
        args = (
            batch.input_ids,
            batch.attention_mask,
            batch.mask.shape[1],
            self.cfg.sampling.temperature,
        )
        full = self.cfg.training.kl_estimator == "full"
        with phase("reference"):
            if batch.trunk is not None:
                ref = reference_logprobs_on(
                    self.reference, batch.trunk, *args, self.top_blocks, full
                )
            elif self.top_blocks:
                ref, batch.trunk = reference_logprobs_and_trunk(
                    self.reference, *args, self.top_blocks, full
                )
            else:
                ref = forward_logprobs(self.reference, *args, full)
        if full:
            batch.ref_distributions = ref
            ref = ref.gather(-1, batch.input_ids[:, -batch.mask.shape[1] :, None]).squeeze(-1)
        batch.ref_logprobs = ref
        seq_ref = (batch.ref_logprobs * batch.mask).sum(-1).double().cpu().view(len(rows), k)
        p_lt, p_le = (m.view(-1, k) for m in empirical_masses(rewards.reshape(-1, 1), *against))
        score = method.score(rewards, p_lt, p_le, seq_ref, self.cfg.n)
        batch.score = score.flatten().float().to(self.device)
        if self.cfg.training.prefix_baseline:
            batch.baseline = self._prefix_scores(rows, k, token_ids, batch, against, method)
        return batch

    def _prefix_scores(self, rows, k, token_ids, batch: Batch, against, method: Method):
        """The method's score of every completion prefix y_<t [B, T]: its reward's masses against
        the row's reference rewards, and pi_ref's log-probability of the prefix (0 where t is past
        the completion)."""
        mask = batch.mask.cpu()
        prompts = [r["prompt"] for r in rows for _ in range(k)]
        with phase("reward"):
            prefix = prefix_rewards(self.scorer, self.tok, prompts, token_ids, mask.shape[1])
        p_lt, p_le = empirical_masses(prefix, *against)
        ref_lp = (batch.ref_logprobs.cpu().double() * mask).cumsum(-1)
        ref_lp = torch.nn.functional.pad(ref_lp[:, :-1], (1, 0))  # log pi_ref(y_<t)
        phi = method.score(prefix, p_lt, p_le, ref_lp, self.cfg.n)
        return (phi * mask).float().to(self.device)

    def cached(self, prompts: list[int], weights: WeightFn, k: int, seed: int) -> Batch:
        """k draws per prompt from its M cached reference samples in proportion to `weights`
        (an unbiased estimate of the weighted loss at a fixed cost); repeated draws are merged
        into one row whose weight counts them. A sample that stopped early ends in its EOS."""
        g = torch.Generator().manual_seed(seed)
        rows, completions, counts = [], [], []
        for i in prompts:
            row = self.rows[i]
            w = weights(torch.tensor([row["rewards"]], dtype=torch.float64), self.cfg.n)[0]
            picks = torch.multinomial(w, k, replacement=True, generator=g)
            for j, c in zip(*torch.unique(picks, return_counts=True), strict=True):
                rows.append(row)
                completions.append(row["token_ids"][int(j)] or [self.tok.eos_token_id])
                counts.append(float(c) / k)
        return self._batch(rows, 1, completions, weights=torch.tensor(counts)).to(self.device)

    @torch.no_grad()
    def heldout_win_rate(self, policy: nn.Module, rank: int, world: int, synced: bool) -> dict:
        """This rank's share of the held-out learning curve: sums over its prompts of the policy's
        win rate against all M cached reference samples (ties half), one sample per prompt at a
        fixed seed, and of BoN-N's (over every N of the M against the samples it did not pick from)."""
        rows = self.heldout[rank::world]
        none = dict.fromkeys(HELDOUT_SUMS, 0.0)
        if not self.heldout or (not rows and not synced):
            return none
        _, rewards = self._sample(policy, rows or self.heldout[:1], 1, HELDOUT_SEED, synced)
        if not rows:  # joined a ZeRO-3 generate only to keep the ranks in step
            return none
        ref = torch.tensor([r["rewards"] for r in rows], dtype=torch.float64)
        won = win_rate_vs_samples(rewards[:, 0], ref)
        n = self.cfg.n
        return {
            "prompts": float(len(rows)),
            "policy": float(won.sum()),
            "policy_sq": float(won.square().sum()),
            "bon": float(bon_win_rate(ref, n).sum()) if ref.shape[1] > n else float("nan"),
        }

    def forward(self, policy: nn.Module, batch: Batch):
        t = batch.mask.shape[1]
        logits, values = policy(batch.input_ids, batch.attention_mask, t + 1, batch.trunk)
        dist = completion_distributions(logits, t, self.cfg.sampling.temperature)
        logprobs = dist.gather(-1, batch.input_ids[:, -t:, None]).squeeze(-1)
        kl = None if batch.ref_distributions is None else kl_full(dist, batch.ref_distributions)
        return logprobs, None if values is None else values[:, -t - 1 : -1], kl

    def export(self, policy: nn.Module, folder: Path) -> None:
        lm = policy.lm
        if hasattr(lm, "merge_and_unload"):
            lm = lm.merge_and_unload()
        lm.save_pretrained(folder, safe_serialization=True)
        self.tok.save_pretrained(folder)
