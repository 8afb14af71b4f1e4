"""The OpenAI wire format: strict request validation, response and stream-chunk bodies, errors.

Every request field is either implemented or refused with a 400 that names it: unknown fields,
wrong JSON types (no coercion of "8" or true into numbers) and parameters accepted only at their
neutral value (`frequency_penalty: 0`, `logit_bias: {}`, ...) all get the OpenAI error body.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_LOGPROBS = 5  # completions: top alternatives per token; chat: top_logprobs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Request(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, max_length=MAX_STOP)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _neutral_penalty(cls, v: float | None) -> float | None:
        if v not in (None, 0):
            raise ValueError("not supported by this server; omit it or send 0")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _neutral_bias(cls, v: dict | None) -> dict | None:
        if v:
            raise ValueError("not supported by this server; omit it or send {}")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def check(self) -> None:
        """Rules across fields (pydantic names one field per error)."""
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options is only allowed with stream: true", "stream_options"
            )


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Request):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("not supported; serve Best-of-N with `vbon serve --bon N` instead")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("not supported by this server (no insertion); omit it")
        return v

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)

    def check(self) -> None:
        super().check()
        if not self.prompts():
            raise APIError(400, "prompt is an empty list; send at least one prompt", "prompt")
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens = 0 is only allowed with echo: true", "max_tokens")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None

    def check(self) -> None:
        super().check()
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise APIError(
                400,
                "max_tokens and max_completion_tokens disagree; send only max_completion_tokens",
                "max_completion_tokens",
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs requires logprobs: true", "top_logprobs")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens


class APIError(Exception):
    """A client mistake (or overload): HTTP status and an OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 503: "server_overloaded"}
        return {
            "error": {
                "message": self.message,
                "type": kind.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line from pydantic's errors, and the offending parameter."""
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = loc[0] if loc else None
    if err.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if not loc:
        return "the request body must be a JSON object with the request's parameters", None
    if err.get("type") == "missing":
        return f"missing required parameter: {'.'.join(loc)}", param
    if err.get("type") == "extra_forbidden":
        return f"unknown parameter: {'.'.join(loc)} (this server does not implement it)", param
    if param == "prompt" and len(loc) > 1 and loc[1] in ("str", "list[str]"):
        return (
            "invalid value for prompt: send a string, a list of strings, a list of token ids "
            "or a list of token-id lists",
            param,
        )
    path = ".".join(x for x in loc if "[" not in x and x not in ("str", "int", "float", "bool"))
    return f"invalid value for {path}: {err.get('msg')}", param


def usage(prompt_tokens: int, choices: list[dict]) -> dict:
    """Token counts of a request: its prompts' and its choices' ("num_tokens")."""
    used = sum(c["num_tokens"] for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": used,
        "total_tokens": prompt_tokens + used,
    }


def completion_logprobs(entries: list[dict], start: int = 0) -> dict:
    """The completions `logprobs` object from per-token entries {"token", "logprob", "top"};
    `text_offset` counts characters of the choice's text from `start`."""
    offsets, at = [], start
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [None if e["top"] is None else dict(e["top"]) for e in entries],
        "text_offset": offsets,
    }


def _chat_token(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(entries: list[dict]) -> dict:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    return {
        "content": [
            _chat_token(e["token"], e["logprob"])
            | {"top_logprobs": [_chat_token(t, lp) for t, lp in e["top"] or []]}
            for e in entries
        ]
    }


def completion_body(model: str, choices: list[dict], prompt_tokens: int) -> dict:
    """`text_completion` object; choices: {"text", "finish_reason", "num_tokens", "logprobs"}."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "text": c["text"],
                "logprobs": c.get("logprobs"),
                "finish_reason": c["finish_reason"],
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, choices),
    }


def chat_body(model: str, choices: list[dict], prompt_tokens: int) -> dict:
    """`chat.completion` object with one assistant message per choice."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c["text"]},
                "logprobs": c.get("logprobs"),
                "finish_reason": c["finish_reason"],
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, choices),
    }


class CompletionStream:
    """The chunk payloads of a streamed completion, one call per event."""

    object, prefix = "text_completion", "cmpl"

    def __init__(self, model: str) -> None:
        self.head = {"id": f"{self.prefix}-{uuid.uuid4().hex}", "object": self.object}
        self.head |= {"created": int(time.time()), "model": model}

    def _chunk(self, choice: dict) -> dict:
        return self.head | {"choices": [choice]}

    def opening(self, index: int) -> list[dict]:
        return []

    def piece(self, index: int, text: str, logprobs: dict | None = None) -> dict:
        return self._chunk(
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
        )

    def finish(self, index: int, reason: str) -> dict:
        return self._chunk({"index": index, "text": "", "logprobs": None, "finish_reason": reason})

    def usage(self, usage: dict) -> dict:
        """The last chunk with `stream_options.include_usage`: no choices."""
        return self.head | {"choices": [], "usage": usage}


class ChatStream(CompletionStream):
    """The chat stream: per choice a role delta, content deltas, then the finish_reason."""

    object, prefix = "chat.completion.chunk", "chatcmpl"

    def _delta(self, index: int, delta: dict, finish: str | None, logprobs) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return self._chunk(choice)

    def opening(self, index: int) -> list[dict]:
        return [self._delta(index, {"role": "assistant", "content": ""}, None, None)]

    def piece(self, index: int, text: str, logprobs: dict | None = None) -> dict:
        return self._delta(index, {"content": text}, None, logprobs)

    def finish(self, index: int, reason: str) -> dict:
        return self._delta(index, {}, reason, None)


def stream_chunks(fmt: CompletionStream, choices: list[dict], usage: dict | None):
    """A stream of finished choices: per choice its opening, one chunk per token piece (with its
    logprobs when asked) and its finish_reason; then the usage chunk when asked."""
    for i, c in enumerate(choices):
        yield from fmt.opening(i)
        for piece in c["pieces"]:
            yield fmt.piece(i, piece["text"], piece.get("logprobs"))
        yield fmt.finish(i, c["finish_reason"])
    if usage is not None:
        yield fmt.usage(usage)
