"""Batched completion for the serving replicas: jobs that arrive together share `generate` calls
(one per distinct sampling setting), every sample drawn with its own seed; per-token
log-probabilities on request (OpenAI `logprobs`, `echo`); or the same, streamed step by step."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def emittable(text: str, stop: tuple[str, ...]) -> int:
    """How much of a growing completion a stream may send now: the text before a stop string,
    less a trailing partial character ("\ufffd") and any tail that could still begin one."""
    cut, stopped = cut_at_stop(text, stop)
    if stopped:
        return len(cut)
    end = len(text.rstrip("\ufffd"))
    hold = max(
        (k for s in stop for k in range(1, min(len(s), end + 1)) if text[:end].endswith(s[:k])),
        default=0,
    )
    return end - hold


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


@dataclass
class _Row:
    """One streamed sample: its tokens so far and how much of its text was sent."""

    job: int
    index: int
    ids: list[int] = field(default_factory=list)
    sent: int = 0
    done: bool = False


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

    def stream(self, jobs: list[Job]) -> Iterator[list[list[dict] | None]]:
        """`run`, step by step: per decoding step, per job, its new events (None once it has
        ended): {"index": j, "text": delta} as sample j's text grows (never past a stop string),
        then {"index": j, "choice": c} with `run`'s choice c when the sample ends."""
        order = sorted(range(len(jobs)), key=lambda i: repr(jobs[i].setting()))
        ended = [False] * len(jobs)
        for _, group in groupby(order, key=lambda i: repr(jobs[i].setting())):
            idx = list(group)
            for step in self._stream_group([jobs[i] for i in idx]):
                out: list[list[dict] | None] = [None if e else [] for e in ended]
                for i, events in zip(idx, step, strict=True):
                    out[i] = events
                yield out
                for i, events in zip(idx, step, strict=True):
                    ended[i] = events is None
            for i in idx:
                ended[i] = True

    def _stream_group(self, jobs: list[Job]) -> Iterator[list[list[dict] | None]]:
        """One `generate` call, streamed: it runs on a thread and hands over each step's tokens."""
        rows = [_Row(n, j) for n, job in enumerate(jobs) for j in range(len(job.seeds))]
        if jobs[0].max_tokens == 0:
            yield self._step(jobs, rows, [None] * len(rows))
            return
        steps: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                self._generate(jobs, on_step=steps.put)
                steps.put(None)
            except BaseException as e:  # raised again on the consuming side
                steps.put(e)

        threading.Thread(target=work, daemon=True).start()
        while (tokens := steps.get()) is not None:
            if isinstance(tokens, BaseException):
                raise tokens
            yield self._step(jobs, rows, tokens.tolist())
        yield self._step(jobs, rows, [None] * len(rows))

    def _step(self, jobs: list[Job], rows: list[_Row], tokens: list) -> list[list[dict] | None]:
        """Per job, the events of its live rows on their next tokens (None: the row ends);
        None for a job that had already ended."""
        ended = [all(r.done for r in rows if r.job == n) for n in range(len(jobs))]
        out: list[list[dict] | None] = [None if e else [] for e in ended]
        for row, token in zip(rows, tokens, strict=True):
            if not row.done:
                out[row.job] += (
                    self._end(jobs, row) if token is None else self._grow(jobs, row, token)
                )
        return out

    def _grow(self, jobs: list[Job], row: _Row, token: int) -> list[dict]:
        """A row's events on its next token."""
        job = jobs[row.job]
        if token in (self.tok.eos_token_id, self.tok.pad_token_id):
            row.ids += [token] if token == self.tok.eos_token_id else []
            return self._end(jobs, row)
        row.ids.append(token)
        text = self.tok.decode(row.ids, skip_special_tokens=True)
        if cut_at_stop(text, job.stop)[1]:
            return self._end(jobs, row)
        n = emittable(text, job.stop)
        events = [{"index": row.index, "text": text[row.sent : n]}] if n > row.sent else []
        row.sent = max(row.sent, n)
        return events

    def _end(self, jobs: list[Job], row: _Row) -> list[dict]:
        """A row's last events: the rest of its text and its choice."""
        row.done = True
        choice = self._choice(jobs[row.job], row.ids, len(jobs))
        rest = choice["text"][row.sent :]
        return ([{"index": row.index, "text": rest}] if rest else []) + [
            {"index": row.index, "choice": choice}
        ]

    def _run_group(self, jobs: list[Job]) -> list[list[dict]]:
        rows = [job for job in jobs for _ in job.seeds]
        completions = self._generate(jobs) if jobs[0].max_tokens else [[] for _ in rows]
        choices = [
            self._choice(job, ids, len(jobs)) for job, ids in zip(rows, completions, strict=True)
        ]
        it = iter(choices)
        return [[next(it) for _ in job.seeds] for job in jobs]

    @torch.no_grad()
    def _generate(self, jobs: list[Job], on_step=None) -> list[list[int]]:
        """One batched call for jobs of one setting: the completion token ids of every seed."""
        first = jobs[0]
        cfg = SamplingConfig(
            max_new_tokens=first.max_tokens,
            temperature=max(first.temperature, MIN_TEMPERATURE),
            top_p=first.top_p,
            top_k=0,
            stop=list(first.stop),
        )
        prompts = [list(j.prompt_ids) for j in jobs]
        seeds = [list(j.seeds) for j in jobs]
        return generate_from_ids(
            self.model, self.tok, prompts, seeds, cfg, on_step=on_step
        ).token_ids

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

    @torch.no_grad()
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
