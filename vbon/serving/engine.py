"""Completion for the serving replicas, continuously batched (`decode.DecodeBatch`): a job joins
the running decode at any step and each of its samples, drawn with its own seed, leaves when it
ends; per-token log-probabilities on request (OpenAI `logprobs`, `echo`); text deltas per step for
streams."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from vbon.config import ModelConfig
from vbon.models import load_causal_lm, load_tokenizer
from vbon.sampling.generate import inverse_cdf_sample, sampling_probs
from vbon.serving.decode import DecodeBatch

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
class Running:
    """A job in the engine: its choices as its samples end (None until then). `shared`: the most
    jobs it was decoded beside (itself included); `stream`: its rows report text deltas."""

    job: Job
    stream: bool
    choices: list[dict | None]
    shared: int = 1

    @property
    def done(self) -> bool:
        return all(c is not None for c in self.choices)


@dataclass
class _Row:
    """One sample being decoded: its generator, its tokens so far, how much of its text was sent."""

    live: Running
    index: int
    generator: torch.Generator
    ids: list[int] = field(default_factory=list)
    sent: int = 0


class CompletionEngine:
    """A causal LM and its tokenizer on one replica, decoding with continuous batching: jobs
    `admit` into the running batch at any step, and each sample leaves it when it ends."""

    def __init__(self, model: ModelConfig, device: str = "cpu") -> None:
        self.tok = load_tokenizer(model)
        self.model = load_causal_lm(model, device)
        self.reset()

    def reset(self) -> None:
        """Drop every running sample (after a fault)."""
        self.batch = DecodeBatch(self.model, self.tok.pad_token_id)
        self.rows: list[_Row] = []

    @property
    def running(self) -> int:
        """Jobs with samples being decoded."""
        return len({id(r.live) for r in self.rows})

    def admit(self, jobs: list[Job], streams: list[bool] | None = None) -> list[Running]:
        """The jobs' samples join the batch, their prompts prefilled together; a job of
        `max_tokens` 0 is answered at once. `streams`: which jobs report text deltas."""
        streams = streams or [False] * len(jobs)
        handles = [Running(j, s, [None] * len(j.seeds)) for j, s in zip(jobs, streams, strict=True)]
        rows = []
        for h in handles:
            if h.job.max_tokens == 0:
                h.choices = [self._choice(h.job, [], 1) for _ in h.job.seeds]
            else:
                rows += [
                    _Row(h, j, torch.Generator().manual_seed(s)) for j, s in enumerate(h.job.seeds)
                ]
        if rows:
            self.batch.join([list(r.live.job.prompt_ids) for r in rows])
            self.rows += rows
        return handles

    def step(self) -> list[tuple[Running, list[dict]]]:
        """One decoding step of every running sample. Per job with samples in it, its events:
        {"index": j, "text": delta} as a streamed sample j grows (never past a stop string), then
        {"index": j, "choice": c} when it ends, with `run`'s choice c."""
        if not self.rows:
            return []
        tokens = self._sample()
        live = {id(r.live): r.live for r in self.rows}
        events: dict[int, list[dict]] = {k: [] for k in live}
        keep = []
        for row, token in zip(self.rows, tokens.tolist(), strict=True):
            row.live.shared = max(row.live.shared, len(live))
            new, ended = self._grow(row, token)
            events[id(row.live)] += new
            keep.append(not ended)
        self.batch.advance(tokens, torch.tensor(keep))
        self.rows = [r for r, k in zip(self.rows, keep, strict=True) if k]
        return [(live[k], e) for k, e in events.items()]

    def run(self, jobs: list[Job]) -> list[list[dict]]:
        """Per job, one choice per seed: {"text", "num_tokens", "finish_reason", "batch",
        "token_ids", "pieces", "prompt_pieces", "logprobs"}. `batch`: the most jobs decoded
        together with it; `pieces`: the completion text split by token; `prompt_pieces`: the
        prompt's, with echo; `logprobs`: per-token entries {"token", "logprob", "top"} when asked.
        Steps the engine until these jobs end (anything else running moves on too)."""
        handles = self.admit(jobs)
        while not all(h.done for h in handles):
            self.step()
        return [h.choices for h in handles]

    def stream(self, jobs: list[Job]) -> Iterator[list[list[dict] | None]]:
        """`run`, step by step: per decoding step, per job, its new events (`step`), None once it
        has ended."""
        handles = self.admit(jobs, [True] * len(jobs))
        yield [
            [{"index": j, "choice": c} for j, c in enumerate(h.choices)] if h.done else []
            for h in handles
        ]
        while not all(h.done for h in handles):
            ended = [h.done for h in handles]
            got = {id(h): e for h, e in self.step()}
            yield [None if e else got.get(id(h), []) for h, e in zip(handles, ended, strict=True)]

    def _sample(self) -> torch.Tensor:
        """Each sample's next token, drawn by inversion with its own generator
        (`vbon.sampling.generate`) at its job's temperature and top_p: rows of one setting at once."""
        tokens = torch.empty(len(self.rows), dtype=torch.long)
        settings: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(self.rows):
            key = (max(r.live.job.temperature, MIN_TEMPERATURE), r.live.job.top_p)
            settings.setdefault(key, []).append(i)
        for (temperature, top_p), idx in settings.items():
            q = sampling_probs(self.batch.logits[idx], temperature, 0, top_p)
            tokens[idx] = inverse_cdf_sample(q.cpu(), [self.rows[i].generator for i in idx])
        return tokens

    def _grow(self, row: _Row, token: int) -> tuple[list[dict], bool]:
        """A sample's events on its next token, and whether it ended: at EOS (kept), PAD, a stop
        string or `max_tokens`."""
        job = row.live.job
        if token in (self.tok.eos_token_id, self.tok.pad_token_id):
            row.ids += [token] if token == self.tok.eos_token_id else []
            return self._end(row), True
        row.ids.append(token)
        if not (job.stop or row.live.stream):
            return (self._end(row), True) if len(row.ids) >= job.max_tokens else ([], False)
        text = self.tok.decode(row.ids, skip_special_tokens=True)
        if cut_at_stop(text, job.stop)[1] or len(row.ids) >= job.max_tokens:
            return self._end(row), True
        if not row.live.stream:
            return [], False
        n = emittable(text, job.stop)
        events = [{"index": row.index, "text": text[row.sent : n]}] if n > row.sent else []
        row.sent = max(row.sent, n)
        return events, False

    def _end(self, row: _Row) -> list[dict]:
        """A sample's last events: the rest of its text (streams) and its choice."""
        choice = self._choice(row.live.job, row.ids, row.live.shared)
        row.live.choices[row.index] = choice
        rest = choice["text"][row.sent :] if row.live.stream else ""
        return ([{"index": row.index, "text": rest}] if rest else []) + [
            {"index": row.index, "choice": choice}
        ]

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
