"""A table of malformed OpenAI requests: (route, JSON body or raw bytes, expected status)."""

from __future__ import annotations

C, CHAT = "/v1/completions", "/v1/chat/completions"
MSG = [{"role": "user", "content": "Hi"}]


def _c(**fields) -> dict:
    return {"model": "tiny", "prompt": "Hi", "max_tokens": 2, **fields}


def _chat(**fields) -> dict:
    return {"model": "tiny", "messages": MSG, "max_tokens": 2, **fields}


MALFORMED: list[tuple[str, object, int]] = [
    # types: no coercion
    (C, _c(max_tokens=True), 400),
    (C, _c(max_tokens="8"), 400),
    (C, _c(max_tokens=2.5), 400),
    (C, _c(max_tokens=-1), 400),
    (C, _c(max_tokens=10**6), 400),
    (C, _c(n="2"), 400),
    (C, _c(n=0), 400),
    (C, _c(n=True), 400),
    (C, _c(n=100), 400),
    (C, _c(temperature="hot"), 400),
    (C, _c(temperature=-0.1), 400),
    (C, _c(temperature=2.5), 400),
    (C, _c(temperature=True), 400),
    (C, _c(top_p=0), 400),
    (C, _c(top_p=1.5), 400),
    (C, _c(seed="1"), 400),
    (C, _c(seed=1.5), 400),
    (C, _c(stream="yes"), 400),
    (C, _c(stream_options={"include_usage": True}), 400),
    (C, _c(stream=True, stream_options={"include_usage": "y"}), 400),
    (C, _c(stream=True, stream_options={"other": 1}), 400),
    (C, _c(user=5), 400),
    # stop
    (C, _c(stop=["a"] * 5), 400),
    (C, _c(stop=[1]), 400),
    (C, _c(stop=5), 400),
    # logprobs and echo
    (C, _c(logprobs=-1), 400),
    (C, _c(logprobs="x"), 400),
    (C, _c(logprobs=6), 400),
    (C, _c(logprobs=True), 400),
    (C, _c(echo="maybe"), 400),
    (C, _c(echo=1), 400),
    (C, _c(max_tokens=0), 400),
    # unimplemented parameters
    (C, _c(frequency_penalty=0.5), 400),
    (C, _c(presence_penalty=-1), 400),
    (C, _c(logit_bias={"1": 5}), 400),
    (C, _c(best_of=3), 400),
    (C, _c(suffix="end"), 400),
    (C, _c(tools=[]), 400),
    (C, _c(unknown_field=1), 400),
    # prompt
    (C, {"model": "tiny"}, 400),
    (C, _c(prompt=None), 400),
    (C, _c(prompt=12), 400),
    (C, _c(prompt=[]), 400),
    (C, _c(prompt=[True]), 400),
    (C, _c(prompt=[1.5]), 400),
    (C, _c(prompt=[[1], "a"]), 400),
    (C, _c(prompt={"text": "a"}), 400),
    (C, _c(prompt=[-1]), 400),
    (C, _c(prompt=[10**9]), 400),
    (C, _c(prompt="x " * 200), 400),
    (C, _c(prompt=["a"] * 9), 400),
    # model and body
    (C, _c(model="gpt-9"), 404),
    (C, _c(model=None), 400),
    (C, {"prompt": "Hi"}, 400),
    (C, [1, 2], 400),
    (C, "just a string", 400),
    (C, b"{not json", 400),
    (C, b"", 400),
    (C, b'{"model": "tiny", "prompt": "a", "n": ' + b"9" * 5000 + b"}", 400),
    (C, b"[" * 50_000 + b"]" * 50_000, 400),
    # chat
    (CHAT, {"model": "tiny"}, 400),
    (CHAT, _chat(messages=[]), 400),
    (CHAT, _chat(messages="Hi"), 400),
    (CHAT, _chat(messages=[{"role": "wizard", "content": "Hi"}]), 400),
    (CHAT, _chat(messages=[{"role": "user"}]), 400),
    (CHAT, _chat(messages=[{"role": "user", "content": 5}]), 400),
    (CHAT, _chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400),
    (CHAT, _chat(logprobs="yes"), 400),
    (CHAT, _chat(top_logprobs=2), 400),
    (CHAT, _chat(logprobs=True, top_logprobs=30), 400),
    (CHAT, _chat(max_completion_tokens=0), 400),
    (CHAT, _chat(max_tokens=3, max_completion_tokens=4), 400),
    (CHAT, _chat(response_format={"type": "json_object"}), 400),
    (CHAT, _chat(tools=[{"type": "function"}]), 400),
    (CHAT, _chat(tool_choice="auto"), 400),
    (CHAT, _chat(functions=[]), 400),
    (CHAT, _chat(n="2"), 400),
]
