"""An evaluation worker: one policy, the frozen reference and the scorer, as a Ray actor."""

from __future__ import annotations

import statistics
import time

import torch
import transformers

from vbon.config import WorkflowConfig
from vbon.core.losses import kl_k1, kl_k3
from vbon.models import load_causal_lm, load_tokenizer
from vbon.models.logprobs import encode_completions, forward_logprobs
from vbon.rewards import build_scorer
from vbon.sampling.generate import generate, render_prompt, row_seed

EVAL_SEED_OFFSET = 7_777_777  # evaluation samples never reuse the reference samples' seeds


class PolicyEvaluator:
    """Samples k completions per held-out prompt from a policy; scores each with the reward and
    with its KL to pi_ref (k1 and k3 summed over completion tokens, at the sampling temperature)."""

    def __init__(self, cfg: WorkflowConfig, policy_path: str) -> None:
        device = "cuda" if cfg.resources.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(cfg.resources.cpus_per_actor)))
        transformers.logging.disable_progress_bar()
        self.cfg = cfg
        policy_cfg = cfg.model.model_copy(update={"name_or_path": policy_path, "revision": None})
        self.tok = load_tokenizer(policy_cfg)
        self.policy = load_causal_lm(policy_cfg, device)
        self.reference = load_causal_lm(cfg.model, device)
        self.scorer = build_scorer(cfg.reward)

    def run(
        self, prompts: list[tuple[int, str]], k: int, time_bon_n: int = 0
    ) -> tuple[list[dict], dict | None]:
        """One row per (prompt_id, text): k completions, rewards, kl_k1, kl_k3, num_tokens; and
        with `time_bon_n`, the seconds per served request (`request_seconds`)."""
        rows = self._rows(prompts, k)
        return rows, self.request_seconds(prompts, time_bon_n) if time_bon_n else None

    def request_seconds(self, prompts: list[tuple[int, str]], n: int, count: int = 4) -> dict:
        """Median seconds of one request as served, over the first `count` prompts: one sample
        ("one"), and BoN ("bon"): N samples in one batch, scored, the best kept."""
        chat, s = self.cfg.data.chat_template, self.cfg.sampling
        one, bon = [], []
        for pid, text in prompts[:count]:
            rendered = [render_prompt(self.tok, text, chat)]
            start = time.perf_counter()
            generate(self.policy, self.tok, rendered, [[pid]], s, not chat)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            out = generate(self.reference, self.tok, rendered, [list(range(n))], s, not chat)
            max(self.scorer.score([text] * n, out.texts))
            bon.append(time.perf_counter() - start)
        return {"one": statistics.median(one), "bon": statistics.median(bon)}

    def _rows(self, prompts: list[tuple[int, str]], k: int) -> list[dict]:
        cfg, chat = self.cfg, self.cfg.data.chat_template
        seed = cfg.sampling.seed + EVAL_SEED_OFFSET
        rendered = [render_prompt(self.tok, text, chat) for _, text in prompts]
        seeds = [[row_seed(seed, pid, j) for j in range(k)] for pid, _ in prompts]
        out = generate(self.policy, self.tok, rendered, seeds, cfg.sampling, not chat)
        texts = [text for _, text in prompts for _ in range(k)]
        rewards = self.scorer.score(texts, out.texts)
        repeated = [r for r in rendered for _ in range(k)]
        ids, att, mask = encode_completions(self.tok, repeated, out.token_ids, not chat)
        ids, att = ids.to(self.policy.device), att.to(self.policy.device)
        width, temp = mask.shape[1], cfg.sampling.temperature
        logp = forward_logprobs(self.policy, ids, att, width, temp).cpu()
        ref = forward_logprobs(self.reference, ids, att, width, temp).cpu()
        k1 = (kl_k1(logp, ref) * mask).sum(-1).tolist()
        k3 = (kl_k3(logp, ref) * mask).sum(-1).tolist()
        rows = []
        for i, (pid, _) in enumerate(prompts):
            block = slice(i * k, (i + 1) * k)
            rows.append(
                {
                    "prompt_id": pid,
                    "completions": out.texts[block],
                    "rewards": rewards[block],
                    "kl_k1": k1[block],
                    "kl_k3": k3[block],
                    "num_tokens": out.num_tokens[block],
                }
            )
        return rows
