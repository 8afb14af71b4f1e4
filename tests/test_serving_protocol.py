"""The OpenAI wire format and the serving engine (a real tiny model), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer

from vbon.config import ModelConfig
from vbon.models.logprobs import model_logprobs
from vbon.serving.engine import CompletionEngine, Job, cut_at_stop, emittable, token_pieces
from vbon.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    CompletionStream,
    stream_chunks,
    validation_message,
)


def _error(cls, body: dict) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as err:
        cls.model_validate({"model": "m", **body})
    return validation_message(err.value.errors())


def test_stop_strings_are_cut_from_the_text() -> None:
    assert cut_at_stop("a good film. Then", (".", "Then")) == ("a good film", True)
    assert cut_at_stop("no stop here", ("###",)) == ("no stop here", False)


def test_requests_accept_openai_fields() -> None:
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": ["a", "b"], "stop": "x", "user": "u", "n": 2, "seed": 3}
    )
    assert req.prompts() == ["a", "b"] and req.stop_list() == ["x"]
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2]}).prompts() == [[1, 2]]
    ids = CompletionRequest.model_validate({"model": "m", "prompt": [[1], [2, 3]]})
    assert ids.prompts() == [[1], [2, 3]]
    neutral = {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "best_of": 1}
    CompletionRequest.model_validate({"model": "m", "prompt": "a", **neutral})
    chat = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 5,
            "logprobs": True,
            "top_logprobs": 2,
        }
    )
    chat.check()
    assert chat.max_tokens == 5 and chat.messages[0].text() == "hi"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": "a", "top_p": 0}, "top_p", "invalid value for top_p"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens", "valid integer"),
        ({"prompt": "a", "max_tokens": "8"}, "max_tokens", "valid integer"),
        ({"prompt": "a", "n": "2"}, "n", "valid integer"),
        ({"prompt": "a", "logprobs": -1}, "logprobs", "greater than or equal to 0"),
        ({"prompt": "a", "logprobs": "x"}, "logprobs", "valid integer"),
        ({"prompt": "a", "logprobs": 6}, "logprobs", "less than or equal to 5"),
        ({"prompt": "a", "echo": "maybe"}, "echo", "valid boolean"),
        ({"prompt": "a", "unknown_field": 1}, "unknown_field", "unknown parameter"),
        ({"prompt": "a", "stop": ["x"] * 5}, "stop", "at most 4"),
        ({"prompt": "a", "frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
        ({"prompt": "a", "logit_bias": {"1": 5}}, "logit_bias", "not supported"),
        ({"prompt": "a", "best_of": 4}, "best_of", "--bon N"),
        ({"prompt": 12}, "prompt", "a list of token ids"),
        ({"prompt": [True]}, "prompt", "a list of token ids"),
        ({}, "prompt", "missing required parameter"),
    ],
)
def test_every_unimplemented_or_mistyped_parameter_is_named(body, param, words) -> None:
    message, got = _error(CompletionRequest, body)
    assert got == param and words in message


@pytest.mark.parametrize(
    ("cls", "body", "param"),
    [
        (
            CompletionRequest,
            {"prompt": "a", "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (CompletionRequest, {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        (CompletionRequest, {"prompt": []}, "prompt"),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2},
            "top_logprobs",
        ),
    ],
)
def test_rules_across_fields_are_400s(cls, body, param) -> None:
    req = cls.model_validate({"model": "m", **body})
    with pytest.raises(APIError) as err:
        req.check()
    assert err.value.status == 400 and err.value.param == param


def test_error_bodies_follow_openai() -> None:
    body = APIError(404, "no such model", "model", "model_not_found").body()
    assert body == {
        "error": {
            "message": "no such model",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_stream_chunks_carry_every_piece_then_the_finish_and_usage() -> None:
    choices = [{"pieces": [{"text": "Hel"}, {"text": "lo"}], "finish_reason": "stop"}]
    chunks = list(stream_chunks(CompletionStream("m"), choices, {"total_tokens": 3}))
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert "".join(texts) == "Hello" and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"total_tokens": 3}


@pytest.fixture(scope="module")
def engine(tiny_path: Path) -> CompletionEngine:
    return CompletionEngine(ModelConfig(name_or_path=str(tiny_path)))


def test_token_pieces_concatenate_to_the_text(tiny_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_path)
    for text in ["A quiet drama, not bad.", "Déjà vu — naïve café ✓"]:
        ids = tok(text)["input_ids"]
        pieces = token_pieces(tok, ids, skip_special_tokens=True)
        assert len(pieces) == len(ids) and "".join(pieces) == text


def test_logprobs_and_echo_are_the_models_own(engine: CompletionEngine) -> None:
    prompt = tuple(engine.tok("The film was")["input_ids"])
    job = Job(prompt, (5,), max_tokens=6, temperature=0.7, top_p=1.0, logprobs=3, echo=True)
    [[choice]] = engine.run([job])
    entries, prompt_pieces = choice["logprobs"], choice["prompt_pieces"]
    assert "".join(prompt_pieces) == "The film was"
    assert len(entries) == len(prompt) + choice["num_tokens"] and entries[0]["logprob"] is None
    ids = torch.tensor([list(prompt) + choice["token_ids"]])
    want = model_logprobs(engine.model, ids, torch.ones_like(ids), ids.shape[1] - 1, 0.7)[0]
    got = torch.tensor([e["logprob"] for e in entries[1:]])
    assert torch.allclose(got, want, atol=1e-4)
    for e in entries[1:]:
        assert len(e["top"]) == 3 and e["top"][0][1] >= e["logprob"] - 1e-6

    score_only = Job(prompt, (5,), max_tokens=0, temperature=0.0, top_p=1.0, logprobs=1, echo=True)
    [[scored]] = engine.run([score_only])
    assert scored["text"] == "" and scored["num_tokens"] == 0
    assert len(scored["logprobs"]) == len(prompt)


def test_stop_cuts_the_text_tokens_and_logprobs_together(engine: CompletionEngine) -> None:
    prompt = tuple(engine.tok("A quiet drama")["input_ids"])
    free = Job(prompt, (7,), max_tokens=12, temperature=1.0, top_p=1.0)
    [[whole]] = engine.run([free])
    stop = whole["text"][len(whole["text"]) // 2 :][:2]
    cut = Job(prompt, (7,), max_tokens=12, temperature=1.0, top_p=1.0, stop=(stop,), logprobs=0)
    [[choice]] = engine.run([cut])
    assert stop not in choice["text"] and choice["finish_reason"] == "stop"
    assert "".join(choice["pieces"]) == choice["text"]
    assert len(choice["logprobs"]) == len(choice["pieces"]) == choice["num_tokens"]


@pytest.mark.parametrize(
    ("text", "stop", "sendable"),
    [
        ("The film", (), "The film"),
        ("The film was gre", ("great",), "The film was "),
        ("The film. End", ("End",), "The film. "),
        ("It was caf\ufffd", (), "It was caf"),
        ("abc", ("x", "bcd"), "a"),
    ],
)
def test_a_stream_never_sends_what_may_become_a_stop_string(text, stop, sendable) -> None:
    assert text[: emittable(text, stop)] == sendable


def _streamed(engine: CompletionEngine, jobs: list[Job]) -> tuple[list, list[list[str]], int]:
    """Per job: its choices, the text deltas per sample, and the number of steps seen."""
    choices = [[None] * len(j.seeds) for j in jobs]
    texts = [[""] * len(j.seeds) for j in jobs]
    steps, ended = 0, [False] * len(jobs)
    for step in engine.stream(jobs):
        steps += 1
        for n, events in enumerate(step):
            assert not (ended[n] and events is not None), "a job sent events after it ended"
            ended[n] = events is None
            for e in events or []:
                assert choices[n][e["index"]] is None, "a sample sent text after its choice"
                if "text" in e:
                    texts[n][e["index"]] += e["text"]
                else:
                    choices[n][e["index"]] = e["choice"]
    return choices, texts, steps


def test_streaming_sends_the_same_choices_token_by_token(engine: CompletionEngine) -> None:
    prompt = tuple(engine.tok("A quiet drama")["input_ids"])
    other = tuple(engine.tok("The film was")["input_ids"])
    [[free]] = engine.run([Job(prompt, (7,), max_tokens=12, temperature=1.0, top_p=1.0)])
    stop = free["text"][len(free["text"]) // 2 :][:2]
    jobs = [
        Job(prompt, (7, 8, 9), max_tokens=12, temperature=1.0, top_p=1.0),
        Job(prompt, (7,), max_tokens=12, temperature=1.0, top_p=1.0, stop=(stop,)),
        Job(other, (3,), max_tokens=5, temperature=0.5, top_p=0.9),
        Job(other, (3,), max_tokens=0, temperature=0.5, top_p=0.9, logprobs=1, echo=True),
    ]
    whole = engine.run(jobs)
    choices, texts, steps = _streamed(engine, jobs)
    assert steps > 12, "the text came in one piece, not step by step"
    for want, got, sent in zip(whole, choices, texts, strict=True):
        assert [c["text"] for c in got] == [c["text"] for c in want] == sent
        for key in ("token_ids", "num_tokens", "finish_reason", "logprobs"):
            assert [c[key] for c in got] == [c[key] for c in want], key
    assert stop not in texts[1][0] and choices[1][0]["finish_reason"] == "stop"
