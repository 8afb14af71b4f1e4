"""Continuous batching on real tiny models: the KV-cache batch that rows join and leave, the
engine's sampler over it, and the replica's decode loop on a real event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from vbon.config import ModelConfig, SamplingConfig
from vbon.models import load_causal_lm, load_tokenizer
from vbon.sampling.generate import generate_from_ids
from vbon.serving.batching import ContinuousBatcher
from vbon.serving.decode import DecodeBatch
from vbon.serving.engine import CompletionEngine, Job

PROMPTS = ["A quiet drama", "The film was long, slow and", "Great", "I went into the theatre and"]


@pytest.fixture(scope="module")
def engine(tiny_path: Path) -> CompletionEngine:
    return CompletionEngine(ModelConfig(name_or_path=str(tiny_path)))


def _job(engine: CompletionEngine, i: int, max_tokens: int = 12, **kw) -> Job:
    ids = tuple(engine.tok(PROMPTS[i % len(PROMPTS)])["input_ids"])
    return Job(ids, (100 + i, 200 + i), max_tokens, kw.pop("temperature", 1.0), 1.0, **kw)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rows_that_join_and_leave_get_the_logits_of_their_own_forward(
    arch: str, tiny_path: Path, llama_path: Path
) -> None:
    """Prompts of different lengths join at different steps and the longest leaves first (its
    cache columns are cut): every row's next-token logits equal a forward of its sequence alone."""
    cfg = ModelConfig(name_or_path=str(tiny_path if arch == "gpt2" else llama_path))
    model, tok = load_causal_lm(cfg, "cpu"), load_tokenizer(cfg)
    batch = DecodeBatch(model, tok.pad_token_id)
    seqs = [tok(PROMPTS[1])["input_ids"], tok(PROMPTS[2])["input_ids"]]
    batch.join(seqs)
    g = torch.Generator().manual_seed(0)
    for step in range(8):
        if step == 3:
            batch.join([tok(PROMPTS[0])["input_ids"]])
            seqs.append(tok(PROMPTS[0])["input_ids"])
        for seq, logits in zip(seqs, batch.logits, strict=True):
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([seq])).logits[0, -1]
            assert torch.allclose(logits, alone, atol=1e-4), (arch, step)
        tokens = torch.randint(0, len(tok), (len(seqs),), generator=g)
        keep = torch.tensor([step != 4] + [True] * (len(seqs) - 1))  # the longest prompt leaves
        batch.advance(tokens, keep)
        seqs = [[*s, int(t)] for s, t, k in zip(seqs, tokens, keep, strict=True) if k]
    batch.advance(torch.zeros(len(seqs), dtype=torch.long), torch.zeros(len(seqs), dtype=bool))
    assert len(batch) == 0


def test_the_engine_draws_what_hf_generate_draws_with_the_same_seeds(
    engine: CompletionEngine,
) -> None:
    jobs = [_job(engine, i) for i in range(4)]
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, top_k=0)
    hf = generate_from_ids(
        engine.model,
        engine.tok,
        [list(j.prompt_ids) for j in jobs],
        [list(j.seeds) for j in jobs],
        cfg,
    ).token_ids
    ours = [c["token_ids"] for choices in engine.run(jobs) for c in choices]
    assert ours == hf


def test_a_job_that_joins_mid_decode_gets_its_own_answer(engine: CompletionEngine) -> None:
    """Jobs of other settings (temperature, stop, length) admitted at different steps: each gets
    the choices it gets alone, and the late one ends first and leaves."""
    first, late = _job(engine, 1, max_tokens=16), _job(engine, 2, max_tokens=4, temperature=0.5)
    [alone_first], [alone_late] = engine.run([first]), engine.run([late])
    [h1] = engine.admit([first])
    for _ in range(5):
        engine.step()
    [h2] = engine.admit([late])
    while not h2.done:
        engine.step()
    assert not h1.done and engine.running == 1
    while not h1.done:
        engine.step()
    for alone, handle in ((alone_first, h1), (alone_late, h2)):
        assert [c["token_ids"] for c in handle.choices] == [c["token_ids"] for c in alone]
    assert h1.shared == h2.shared == 2


def _serve(engine: CompletionEngine, coro_fn, **kw):
    """Run `coro_fn(batcher)` on a fresh event loop against a new decode loop."""
    args = {"max_jobs": 64, "gap_s": 0.05, "max_wait_s": 1.0} | kw
    batcher = ContinuousBatcher(engine, **args)
    return asyncio.run(coro_fn(batcher))


def test_requests_during_a_decode_join_it_and_leave_when_they_end(llama_path: Path) -> None:
    """A long job decodes (a random-weight Llama: EOS is rare); 8 short ones sent once it has
    begun join it, end first, and get the answers they get alone."""
    engine = CompletionEngine(ModelConfig(name_or_path=str(llama_path)))

    async def main(batcher: ContinuousBatcher):
        begun = asyncio.Event()
        long = asyncio.ensure_future(
            batcher.submit(_job(engine, 0, max_tokens=100), lambda _: begun.set())
        )
        await begun.wait()
        shorts = await asyncio.gather(
            *(batcher.submit(_job(engine, i, max_tokens=3)) for i in range(1, 9))
        )
        return long.done(), await long, shorts

    long_was_done, long, shorts = _serve(engine, main)
    assert not long_was_done and max(c["num_tokens"] for c in long) > 3  # it outlived them
    assert all(c["batch"] == 9 for s in [long, *shorts] for c in s)  # decoded all together
    for i, choices in enumerate(shorts, 1):
        [alone] = engine.run([_job(engine, i, max_tokens=3)])
        assert [c["token_ids"] for c in choices] == [c["token_ids"] for c in alone]


def test_a_burst_at_an_idle_engine_is_decoded_together(engine: CompletionEngine) -> None:
    """8 requests 2 ms apart (gap 50 ms): one batch, however the burst arrives."""

    async def main(batcher: ContinuousBatcher):
        async def spread(i: int):
            await asyncio.sleep(0.002 * i)
            return await batcher.submit(_job(engine, i, max_tokens=2))

        return await asyncio.gather(*(spread(i) for i in range(8)))

    assert all(c["batch"] == 8 for r in _serve(engine, main) for c in r)


def test_max_jobs_caps_the_batch_and_the_rest_wait_their_turn(engine: CompletionEngine) -> None:
    async def main(batcher: ContinuousBatcher):
        return await asyncio.gather(*(batcher.submit(_job(engine, i)) for i in range(5)))

    results = _serve(engine, main, max_jobs=2)
    assert len(results) == 5 and all(c["batch"] <= 2 for r in results for c in r)


def test_a_stream_gets_its_text_step_by_step_before_its_choices(engine: CompletionEngine) -> None:
    async def main(batcher: ContinuousBatcher):
        events: list[list[dict]] = []
        choices = await batcher.submit(_job(engine, 3, max_tokens=10), events.append)
        return events, choices

    events, choices = _serve(engine, main)
    assert len(events) >= 5
    for j, choice in enumerate(choices):
        text = "".join(e.get("text", "") for step in events for e in step if e["index"] == j)
        assert text == choice["text"]
        assert [
            e["choice"] for step in events for e in step if "choice" in e and e["index"] == j
        ] == [choice]


def test_a_fault_fails_the_requests_in_the_batch_and_the_next_ones_run(
    engine: CompletionEngine,
) -> None:
    """A prompt id outside the vocabulary breaks the prefill it shares with a good job."""
    bad = Job((10**6,), (1,), 4, 1.0, 1.0)

    async def main(batcher: ContinuousBatcher):
        failed = await asyncio.gather(
            batcher.submit(bad), batcher.submit(_job(engine, 0)), return_exceptions=True
        )
        return failed, await batcher.submit(_job(engine, 1, max_tokens=2))

    failed, after = _serve(engine, main)
    assert all(isinstance(e, IndexError) for e in failed), failed
    assert [c["num_tokens"] for c in after] == [2, 2]
