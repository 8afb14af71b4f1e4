"""The OpenAI wire format and the serving engine's text handling, without a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vbon.serving.engine import cut_at_stop
from vbon.serving.protocol import APIError, CompletionRequest, validation_message


def test_stop_strings_are_cut_from_the_text() -> None:
    assert cut_at_stop("a good film. Then", (".", "Then")) == ("a good film", True)
    assert cut_at_stop("no stop here", ("###",)) == ("no stop here", False)


def test_requests_accept_openai_fields_and_reject_bad_values() -> None:
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": ["a", "b"], "stop": "x", "user": "ignored", "n": 2}
    )
    assert req.prompts() == ["a", "b"] and req.stop_list() == ["x"]
    with pytest.raises(ValidationError) as err:
        CompletionRequest.model_validate({"model": "m", "prompt": "a", "top_p": 0})
    message, param = validation_message(err.value.errors())
    assert param == "top_p" and message.startswith("invalid value for top_p")


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


def test_streaming_is_refused_clearly() -> None:
    with pytest.raises(ValidationError) as err:
        CompletionRequest.model_validate({"model": "m", "prompt": "a", "stream": True})
    message, param = validation_message(err.value.errors())
    assert param == "stream" and "False" in message
