"""Batched completion for the serving replicas: jobs that arrive together share `generate` calls
(one per distinct sampling setting), every sample drawn with its own seed."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import torch

from vbon.config import ModelConfig, SamplingConfig
from vbon.models import load_causal_lm, load_tokenizer
from vbon.sampling.generate import generate

MIN_TEMPERATURE = 1e-4  # temperature 0 (greedy) is sampled at this temperature


@dataclass(frozen=True)
class Job:
    """One prompt (already rendered), sampled once per seed."""

    prompt: str
    seeds: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    add_special_tokens: bool = True

    def setting(self) -> tuple:
        return (self.max_tokens, self.temperature, self.top_p, self.stop, self.add_special_tokens)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop string (OpenAI leaves the stop string out)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class CompletionEngine:
    """A causal LM and its tokenizer on one replica."""

    def __init__(self, model: ModelConfig, device: str = "cpu") -> None:
        self.tok = load_tokenizer(model)
        self.model = load_causal_lm(model, device)

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self.tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def run(self, jobs: list[Job]) -> list[list[dict]]:
        """Per job, one {"text", "num_tokens", "finish_reason", "batch"} per seed; `batch` is
        the number of jobs that shared this call."""
        results: dict[int, list[dict]] = {}
        order = sorted(range(len(jobs)), key=lambda i: repr(jobs[i].setting()))
        for _, group in groupby(order, key=lambda i: repr(jobs[i].setting())):
            idx = list(group)
            results |= dict(zip(idx, self._run_group([jobs[i] for i in idx]), strict=True))
        return [results[i] for i in range(len(jobs))]

    @torch.no_grad()
    def _run_group(self, jobs: list[Job]) -> list[list[dict]]:
        first = jobs[0]
        cfg = SamplingConfig(
            max_new_tokens=first.max_tokens,
            temperature=max(first.temperature, MIN_TEMPERATURE),
            top_p=first.top_p,
            top_k=0,
            stop=list(first.stop),
        )
        out = generate(
            self.model,
            self.tok,
            [j.prompt for j in jobs],
            [list(j.seeds) for j in jobs],
            cfg,
            add_special_tokens=first.add_special_tokens,
        )
        choices, row = [], 0
        for job in jobs:
            mine = []
            for _ in job.seeds:
                text, stopped = cut_at_stop(out.texts[row], job.stop)
                n = out.num_tokens[row]
                finish = "stop" if stopped or n < job.max_tokens else "length"
                mine.append(
                    {"text": text, "num_tokens": n, "finish_reason": finish, "batch": len(jobs)}
                )
                row += 1
            choices.append(mine)
        return choices
