"""A sampling worker: its own copy of the reference model and the reward scorer."""

from __future__ import annotations

import os

import torch
import transformers

from vbon.config import WorkflowConfig
from vbon.data.prompts import Prompt
from vbon.models import load_causal_lm, load_tokenizer
from vbon.rewards import build_scorer
from vbon.sampling.generate import generate, render_prompt, row_seed


class Sampler:
    """Generates M samples per prompt and scores them; plain Python, wrapped as a Ray actor."""

    def __init__(self, cfg: WorkflowConfig) -> None:
        device = "cuda" if cfg.resources.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(cfg.resources.cpus_per_actor)))
        transformers.logging.disable_progress_bar()
        self.cfg = cfg
        self.tok = load_tokenizer(cfg.model)
        self.model = load_causal_lm(cfg.model, device=device)
        self.scorer = build_scorer(cfg.reward)

    def pid(self) -> int:
        return os.getpid()

    def run(self, prompts: list[Prompt]) -> list[dict]:
        """One row per prompt: its M completions (text and token ids), rewards and token counts."""
        m, seed = self.cfg.m, self.cfg.sampling.seed
        seeds = [[row_seed(seed, p.prompt_id, j) for j in range(m)] for p in prompts]
        out = generate(
            self.model,
            self.tok,
            [render_prompt(self.tok, p.text, self.cfg.data.chat_template) for p in prompts],
            seeds,
            self.cfg.sampling,
            add_special_tokens=not self.cfg.data.chat_template,
        )
        rewards = self.scorer.score([p.text for p in prompts for _ in range(m)], out.texts)
        rows = []
        for i, p in enumerate(prompts):
            block = slice(i * m, (i + 1) * m)
            rows.append(
                {
                    "prompt_id": p.prompt_id,
                    "split": p.split,
                    "prompt": p.text,
                    "completions": out.texts[block],
                    "rewards": rewards[block],
                    "token_ids": out.token_ids[block],
                    "num_tokens": out.num_tokens[block],
                }
            )
        return rows
