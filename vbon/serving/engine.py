"""Batched completion for the serving replicas: jobs that arrive together share `generate` calls
(one per distinct sampling setting), every sample drawn with its own seed; per-token
log-probabilities on request (OpenAI `logprobs`, `echo`)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import torch

from vbon.config import ModelConfig, SamplingConfig
from vbon.models import load_causal_lm, load_tokenizer
from vbon.sampling.generate import generate_from_ids

MIN_TEMPERATURE = 1e-4  # temperature 0 (greedy) is sampled at this temperature


@dataclass(frozen=True)
class Job:
    """One prompt (token ids, non-empty), sampled once per seed. `logprobs`: report each
    token's log-probability and this many top alternatives (None: none); `echo`: the prompt's
    tokens too. `max_tokens` 0 only scores the prompt."""

    prompt_ids: tuple[int, ...]
    seeds: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    echo: bool = False

    def setting(self) -> tuple:
        return (self.max_tokens, self.temperature, self.top_p, self.stop)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop string (OpenAI leaves the stop string out)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def token_pieces(tok, ids: list[int], skip_special_tokens: bool) -> list[str]:
    """Each token's share of `decode(ids)`: pieces that concatenate to the decoded text. A token
    ending inside a multi-byte character gets "" and the character goes to the token that
    completes it."""
    pieces, done = [], ""
    for i in range(len(ids)):
        text = tok.decode(ids[: i + 1], skip_special_tokens=skip_special_tokens)
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")
            continue
        pieces.append(text[len(done) :])
        done = text
    return pieces


def truncate_pieces(pieces: list[str], limit: int) -> list[str]:
    """The pieces that start before character `limit`, the last one cut there."""
    out, at = [], 0
    for p in pieces:
        if at >= limit:
            break
        out.append(p[: limit - at])
        at += len(p)
    return out


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, k: int) -> tuple:
    """log softmax of next-token logits [L-1, V] at each of ids[1:]: (logprob [L-1], top-k ids
    [L-1, k], top-k logprobs [L-1, k])."""
    lp = torch.log_softmax(logits.float(), -1)
    top = lp.topk(k, -1)
    return lp.gather(-1, ids[1:, None]).squeeze(-1), top.indices, top.values


class CompletionEngine:
    """A causal LM and its tokenizer on one replica."""

    def __init__(self, model: ModelConfig, device: str = "cpu") -> None:
        self.tok = load_tokenizer(model)
        self.model = load_causal_lm(model, device)

    def run(self, jobs: list[Job]) -> list[list[dict]]:
        """Per job, one choice per seed: {"text", "num_tokens", "finish_reason", "batch",
        "token_ids", "pieces", "prompt_pieces", "logprobs"}. `batch`: the number of jobs that shared this
        call; `pieces`: the completion text split by token; `prompt_pieces`: the prompt's, with
        echo; `logprobs`: per-token entries {"token", "logprob", "top"} when asked."""
        results: dict[int, list[dict]] = {}
        order = sorted(range(len(jobs)), key=lambda i: repr(jobs[i].setting()))
        for _, group in groupby(order, key=lambda i: repr(jobs[i].setting())):
            idx = list(group)
            results |= dict(zip(idx, self._run_group([jobs[i] for i in idx]), strict=True))
        return [results[i] for i in range(len(jobs))]

    @torch.no_grad()
    def _run_group(self, jobs: list[Job]) -> list[list[dict]]:
        first = jobs[0]
        rows = [job for job in jobs for _ in job.seeds]
        if first.max_tokens == 0:
            completions = [[] for _ in rows]
        else:
            cfg = SamplingConfig(
                max_new_tokens=first.max_tokens,
                temperature=max(first.temperature, MIN_TEMPERATURE),
                top_p=first.top_p,
                top_k=0,
                stop=list(first.stop),
            )
            prompts = [list(j.prompt_ids) for j in jobs]
            out = generate_from_ids(
                self.model, self.tok, prompts, [list(j.seeds) for j in jobs], cfg
            )
            completions = out.token_ids
        choices = [
            self._choice(job, ids, len(jobs)) for job, ids in zip(rows, completions, strict=True)
        ]
        it = iter(choices)
        return [[next(it) for _ in job.seeds] for job in jobs]

    def _choice(self, job: Job, ids: list[int], batch: int) -> dict:
        pieces = token_pieces(self.tok, ids, skip_special_tokens=True)
        text, stopped = cut_at_stop("".join(pieces), job.stop)
        kept = truncate_pieces(pieces, len(text))
        if stopped:
            pieces, ids = kept, ids[: len(kept)]
        finish = "stop" if stopped or len(ids) < job.max_tokens else "length"
        if job.max_tokens == 0:
            finish = "length"
        choice = {"text": text, "num_tokens": len(ids), "finish_reason": finish, "batch": batch}
        choice |= {"token_ids": ids, "pieces": pieces, "logprobs": None, "prompt_pieces": None}
        if job.echo:
            choice["prompt_pieces"] = token_pieces(self.tok, list(job.prompt_ids), False)
        if job.logprobs is not None:
            choice["logprobs"] = self._logprobs(job, ids, pieces, choice["prompt_pieces"])
        return choice

    def _logprobs(
        self, job: Job, ids: list[int], pieces: list[str], prompt_pieces: list[str] | None
    ) -> list[dict]:
        """Per-token entries of the completion, after those of the prompt with echo (its first
        token has none), at the request's temperature (temperature 0: the model's own
        distribution, T = 1). Top alternatives ignore top_p."""
        prompt = list(job.prompt_ids)
        full = torch.tensor(prompt + ids, device=self.model.device)
        logits = self.model(input_ids=full[None]).logits[0, :-1]
        temperature = job.temperature if job.temperature > 0 else 1.0
        chosen, top_ids, top_lp = token_logprobs(logits / temperature, full, job.logprobs)

        def entry(piece: str, at: int) -> dict:  # the token at position at + 1
            top = [
                (self.tok.decode([int(t)]), float(v))
                for t, v in zip(top_ids[at], top_lp[at], strict=True)
            ]
            return {"token": piece, "logprob": float(chosen[at]), "top": top}

        entries = [entry(p, len(prompt) - 1 + i) for i, p in enumerate(pieces)]
        if prompt_pieces is None:
            return entries
        head = [{"token": prompt_pieces[0], "logprob": None, "top": None}]
        return head + [entry(p, i - 1) for i, p in enumerate(prompt_pieces[1:], 1)] + entries
