"""Each reward backend on real parts: VADER, a user's function, a real classifier, a real HTTP server."""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from vbon.config import CallableReward, ClassifierReward, HttpReward, VaderReward
from vbon.errors import RewardError
from vbon.rewards import build_scorer

PROMPTS = ["The film was", "The plot was"]


def test_vader_ranks_sentiment() -> None:
    scorer = build_scorer(VaderReward())
    good, bad = scorer.score(PROMPTS, [" wonderful and moving.", " boring and painful."])
    assert good > 0.5 and bad < -0.5


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions):\n"
        "    return [len(c) for c in completions]\n"
        "def broken(prompts, completions):\n"
        "    return [float('nan') if 'bad' in c else 1.0 for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_callable_reward(user_module: str) -> None:
    scorer = build_scorer(CallableReward(kind="callable", function=f"{user_module}:length"))
    assert scorer.score(PROMPTS, ["abc", "abcdef"]) == [3.0, 6.0]


def test_nan_reward_names_the_prompt(user_module: str) -> None:
    scorer = build_scorer(CallableReward(kind="callable", function=f"{user_module}:broken"))
    with pytest.raises(
        RewardError, match=r"reward nan \(not finite\) for completion 1 of prompt 'The plot was'"
    ):
        scorer.score(PROMPTS, ["fine", "bad"])


def test_callable_import_errors_are_clear() -> None:
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        build_scorer(CallableReward(kind="callable", function="no_such_module_xyz:f"))
    with pytest.raises(RewardError, match="has no function 'nope'"):
        build_scorer(CallableReward(kind="callable", function="math:nope"))


@pytest.fixture(scope="module")
def classifier_path(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-label classifier built from a config, with the tiny tokenizer, saved to a folder."""
    folder = tmp_path_factory.mktemp("classifier")
    tok = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tok.eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_classifier_reward_picks_the_named_logit(classifier_path: Path) -> None:
    completions = [" a wonderful film.", " the plot made no sense and the dialogue was painful."]
    by_name = build_scorer(
        ClassifierReward(kind="hf_classifier", name_or_path=str(classifier_path), label="POSITIVE")
    ).score(PROMPTS, completions)
    model = GPT2ForSequenceClassification.from_pretrained(classifier_path).eval()
    tok = AutoTokenizer.from_pretrained(classifier_path)
    for text, got in zip(completions, by_name, strict=True):
        with torch.no_grad():
            want = model(**tok(text, return_tensors="pt")).logits[0, 1].item()
        assert got == pytest.approx(want, abs=1e-4)
    probs = build_scorer(
        ClassifierReward(
            kind="hf_classifier", name_or_path=str(classifier_path), label=0, output="prob"
        )
    ).score(PROMPTS, completions)
    assert all(0.0 < p < 1.0 for p in probs)


def test_classifier_unknown_label_is_clear(classifier_path: Path) -> None:
    with pytest.raises(
        RewardError,
        match=r"reward.label = 'JOY': the classifier's labels are \['NEGATIVE', 'POSITIVE'\]",
    ):
        build_scorer(
            ClassifierReward(kind="hf_classifier", name_or_path=str(classifier_path), label="JOY")
        )


class _RewardServer(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, str | None]]] = []
    calls = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        status, override = self.script.pop(0) if self.script else (200, None)
        payload = override or json.dumps({"rewards": [float(len(c)) for c in body["completions"]]})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def reward_server() -> Iterator[tuple[str, type[_RewardServer]]]:
    handler = type("Handler", (_RewardServer,), {"script": [], "calls": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score", handler
    server.shutdown()
    server.server_close()


def test_http_reward_batches_and_retries(reward_server) -> None:
    url, handler = reward_server
    handler.script = [(503, '{"error": "warming up"}')]
    scorer = build_scorer(HttpReward(kind="http", url=url, batch_size=2, max_retries=2))
    rewards = scorer.score(["p"] * 5, ["a", "bb", "ccc", "dddd", "eeeee"])
    assert rewards == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert handler.calls == 4  # 3 batches + 1 retried


def test_http_reward_nan_and_bad_answers(reward_server) -> None:
    url, handler = reward_server
    scorer = build_scorer(HttpReward(kind="http", url=url, max_retries=0))
    handler.script = [(200, '{"rewards": [1.0, NaN]}')]
    with pytest.raises(RewardError, match=r"not finite.*'The plot was'"):
        scorer.score(PROMPTS, ["x", "y"])
    handler.script = [(200, '{"scores": [1, 2]}')]
    with pytest.raises(RewardError, match=r'must answer \{"rewards"'):
        scorer.score(PROMPTS, ["x", "y"])
    handler.script = [(400, '{"error": "bad"}')]
    with pytest.raises(RewardError, match="answered HTTP 400"):
        scorer.score(PROMPTS, ["x", "y"])


def test_http_reward_unreachable_gives_up_after_retries() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scorer = build_scorer(
        HttpReward(kind="http", url=f"http://127.0.0.1:{port}/", max_retries=1, timeout_s=1)
    )
    with pytest.raises(RewardError, match="failed after 2 tries"):
        scorer.score(PROMPTS, ["x", "y"])


def test_vader_rewards_are_finite_on_odd_text() -> None:
    scorer = build_scorer(VaderReward())
    rewards = scorer.score(["", "x"], ["", "\x00\ufffd!!!"])
    assert all(math.isfinite(r) for r in rewards)
