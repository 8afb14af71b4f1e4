"""Ray Serve: a real Serve app on the tiny model, real HTTP from httpx and the `openai` client."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import yaml
from malformed_requests import MALFORMED
from ray import serve
from ray_helpers import free_port, local_ray
from transformers import AutoModelForCausalLM, AutoTokenizer

from vbon.config import parse_workflow
from vbon.errors import ConfigError, ModelLoadError
from vbon.models.logprobs import model_logprobs
from vbon.serving.app import APP_NAME
from vbon.serving.launch import serve_model

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="module")
def model_dir(tiny_path: Path, tmp_path_factory) -> Path:
    """The tiny model with a chat template added to its tokenizer."""
    folder = tmp_path_factory.mktemp("chat-tiny")
    for f in tiny_path.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    with local_ray():
        yield


PORT = free_port()


def _deploy(model_dir: Path, **serving) -> str:
    cfg = parse_workflow(
        {
            "name": "tiny",
            "reward": {"kind": "callable", "function": "reward_fns:letter_e_share"},
            "serving": {
                "port": PORT,
                "max_tokens": 32,
                "max_n": 8,
                "max_prompt_tokens": 40,
                **serving,
            },
        }
    )
    info = serve_model(cfg, model_dir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{info['url']}/healthz", timeout=2).status_code == 200:
                return info["url"]
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the endpoint never became healthy")


@pytest.fixture(scope="module")
def url(model_dir: Path) -> str:
    return _deploy(
        model_dir, min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=1
    )


def _complete(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": "tiny", **body}, timeout=60)


def test_completions_chat_and_models_with_the_openai_client(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.completions.create(model="tiny", prompt="The film", max_tokens=8, seed=3)
    assert len(out.choices) == 1 and out.choices[0].text and out.usage.completion_tokens <= 8
    assert out.choices[0].finish_reason in ("stop", "length")
    many = client.completions.create(model="tiny", prompt="The film", max_tokens=6, n=3, seed=1)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.text for c in many.choices}) > 1  # independent samples
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Review the film."}], max_tokens=8
    )
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage.prompt_tokens > 5  # the chat template was applied


def test_seed_reproducibility_and_stop(url: str) -> None:
    a = _complete(url, prompt="A quiet drama", max_tokens=12, seed=7).json()
    b = _complete(url, prompt="A quiet drama", max_tokens=12, seed=7).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    # the tiny model is peaked: other seeds may repeat a's text, but not all of them
    others = {
        _complete(url, prompt="A quiet drama", max_tokens=12, seed=s).json()["choices"][0]["text"]
        for s in range(8, 12)
    }
    assert others - {a["choices"][0]["text"]}
    text = a["choices"][0]["text"]
    stop = text.strip()[:2]
    cut = _complete(url, prompt="A quiet drama", max_tokens=12, seed=7, stop=[stop]).json()
    assert stop not in cut["choices"][0]["text"] and cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"max_tokens": 4}, 400, "prompt"),  # missing prompt
        ({"prompt": "x " * 200, "max_tokens": 4}, 400, "prompt"),  # over max_prompt_tokens
        ({"prompt": "Hi", "max_tokens": 1000}, 400, "max_tokens"),
        ({"prompt": "Hi", "n": 9}, 400, "n"),
        ({"prompt": "Hi", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": "Hi", "model": "gpt-9"}, 404, "model"),
    ],
)
def test_client_mistakes_get_4xx_with_an_openai_error_body(url, body, status, param) -> None:
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_malformed_json_and_wrong_route(url: str) -> None:
    r = httpx.post(
        f"{url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="Hi", max_tokens=2)


def _error_body(r: httpx.Response) -> dict:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(
    ("method", "route", "content", "status"),
    [
        ("GET", "/v1/completions", None, 405),
        ("POST", "/v1/nothing", b"{}", 404),
        (
            "POST",
            "/v1/completions",
            b'{"model": "tiny", "prompt": "a", "n": ' + b"9" * 5000 + b"}",
            400,
        ),
        ("POST", "/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400),
        ("POST", "/v1/completions", b'{"model": "tiny", "prompt": "' + b"x" * 2**22 + b'"}', 413),
    ],
)
def test_every_error_has_the_openai_body_and_no_input_gives_5xx(
    url: str, method: str, route: str, content: bytes | None, status: int
) -> None:
    headers = {"content-type": "application/json"}
    r = httpx.request(method, f"{url}{route}", content=content, headers=headers, timeout=60)
    assert r.status_code == status
    _error_body(r)


def test_a_table_of_malformed_requests_gets_openai_4xx_and_the_server_keeps_serving(
    url: str,
) -> None:
    assert len(MALFORMED) >= 60
    wrong = []
    with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as client:
        for route, body, status in MALFORMED:
            if isinstance(body, bytes):
                r = client.post(f"{url}{route}", content=body)
            else:
                r = client.post(f"{url}{route}", json=body)
            err = (
                r.json().get("error")
                if r.headers.get("content-type") == "application/json"
                else None
            )
            if r.status_code != status or not err or not err.get("message"):
                wrong.append((route, str(body)[:60], r.status_code, r.text[:120]))
    assert not wrong, wrong
    assert _complete(url, prompt="Still here", max_tokens=4).status_code == 200


def test_prompts_as_token_ids_and_an_empty_prompt(url: str, model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("A quiet drama")["input_ids"]
    by_text = _complete(url, prompt="A quiet drama", max_tokens=8, seed=4).json()
    by_ids = _complete(url, prompt=ids, max_tokens=8, seed=4).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    many = _complete(url, prompt=[ids, ids[:2]], max_tokens=4, n=2, seed=4).json()
    assert len(many["choices"]) == 4
    assert _complete(url, prompt="", max_tokens=4).status_code == 200
    bad = _complete(url, prompt=[len(tok) + 5], max_tokens=4)
    assert bad.status_code == 400 and _error_body(bad)["param"] == "prompt"


def test_logprobs_and_echo_score_a_prompt_for_loglikelihood(url: str) -> None:
    r = _complete(
        url, prompt="The film was good", max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == "The film was good" and lp["token_logprobs"][0] is None
    assert all(x < 0 for x in lp["token_logprobs"][1:])
    assert "".join(lp["tokens"]) == choice["text"] and lp["text_offset"][0] == 0
    gen = _complete(url, prompt="The film", max_tokens=6, logprobs=2, seed=1).json()["choices"][0]
    assert "".join(gen["logprobs"]["tokens"]) == gen["text"]
    assert all(len(top) == 2 for top in gen["logprobs"]["top_logprobs"])
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Review the film."}],
        max_completion_tokens=5,
        logprobs=True,
        top_logprobs=2,
        seed=2,
    )
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_streaming_with_the_openai_client(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    whole = client.completions.create(model="tiny", prompt="The film", max_tokens=10, seed=5)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="The film",
            max_tokens=10,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(chunks) > 3 and text == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    stop = whole.choices[0].text[3:5]
    for n, stops in ((2, None), (1, [stop])):
        kwargs = {"model": "tiny", "prompt": "The film", "max_tokens": 10, "seed": 5, "n": n}
        want = client.completions.create(**kwargs, stop=stops)
        got = ["", ""]
        finish = {}
        for c in client.completions.create(**kwargs, stop=stops, stream=True):
            got[c.choices[0].index] += c.choices[0].text
            if c.choices[0].finish_reason:
                finish[c.choices[0].index] = c.choices[0].finish_reason
        assert got[:n] == [c.text for c in want.choices]
        assert finish == {c.index: c.finish_reason for c in want.choices}
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Review the film."}],
        max_tokens=8,
        seed=6,
        stream=True,
    )
    deltas = [c.choices[0].delta for c in stream]
    assert deltas[0].role == "assistant"
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Review the film."}],
        max_tokens=8,
        seed=6,
    )
    assert "".join(d.content or "" for d in deltas) == chat.choices[0].message.content


LM_EVAL_TASKS = {
    "vbon_sentiment_mc": {
        "output_type": "multiple_choice",
        "doc_to_text": "{{text}} The review is",
        "doc_to_choice": [" negative", " positive"],
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc"}],
    },
    "vbon_sentiment_gen": {
        "output_type": "generate_until",
        "doc_to_text": "{{text}} In short,",
        "doc_to_target": " good",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
        "metric_list": [{"metric": "exact_match"}],
    },
}


def _lm_eval_tasks(folder: Path) -> Path:
    """The two tasks over a local JSON-lines file, as lm-eval task YAMLs."""
    data = folder / "reviews.jsonl"
    rows = [("A wonderful, moving film.", 1), ("Dull and far too long.", 0), ("I loved it.", 1)]
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    for name, spec in LM_EVAL_TASKS.items():
        task = {"task": name, "dataset_path": "json", "test_split": "test", **spec}
        task["dataset_kwargs"] = {"data_files": {"test": str(data)}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))
    return folder


def test_lm_evaluation_harness_runs_against_the_endpoint(
    url: str, model_dir: Path, tmp_path: Path
) -> None:
    """lm-eval's own clients: `local-completions` (token-id prompts, echo + logprobs for
    log-likelihood, generation) and `local-chat-completions` (generation)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_path=str(_lm_eval_tasks(tmp_path)))
    args = f"model=tiny,tokenizer={model_dir},num_concurrent=2,max_retries=1"
    out = simple_evaluate(
        model="local-completions",
        model_args=f"{args},base_url={url}/v1/completions",
        tasks=list(LM_EVAL_TASKS),
        task_manager=tasks,
        log_samples=True,
    )
    assert 0 <= out["results"]["vbon_sentiment_mc"]["acc,none"] <= 1
    assert "exact_match,none" in out["results"]["vbon_sentiment_gen"]
    # the harness's log-likelihood of " negative" after the first review is the model's own
    doc = out["samples"]["vbon_sentiment_mc"][0]
    tok = AutoTokenizer.from_pretrained(model_dir)
    context, continuation = doc["arguments"][0]
    context, ending = tok(context)["input_ids"], tok(continuation)["input_ids"]
    ids = torch.tensor([context + ending])
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    with torch.no_grad():
        want = model_logprobs(model, ids, torch.ones_like(ids), len(ending), 1.0).sum()
    assert abs(doc["resps"][0][0][0] - float(want)) < 1e-3

    chat = simple_evaluate(
        model="local-chat-completions",
        model_args=f"model=tiny,base_url={url}/v1/chat/completions,max_retries=1",
        tasks=["vbon_sentiment_gen"],
        task_manager=tasks,
        apply_chat_template=True,
    )
    assert "exact_match,none" in chat["results"]["vbon_sentiment_gen"]


def test_concurrent_requests_are_batched_and_autoscaled(url: str) -> None:
    """Requests arriving together share generate calls; under sustained load the policy
    deployment grows from 1 to max_replicas = 2 replicas (bounded: 90 s, 3000 requests)."""
    deadline, sent, replicas, batched = time.monotonic() + 90, 0, 1, []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline and sent < 3000 and replicas < 2:
            futures = [pool.submit(_complete, url, prompt="Long", max_tokens=24) for _ in range(8)]
            responses = [f.result() for f in futures]
            assert all(r.status_code == 200 for r in responses)
            batched += [int(r.headers["x-vbon-batch-size"]) for r in responses]
            sent += 8
            status = serve.status().applications[APP_NAME].deployments["Policy"]
            replicas = status.replica_states.get("RUNNING", 0)
    assert replicas == 2
    assert max(batched) > 1


def test_overload_gets_503_with_retry_after(model_dir: Path) -> None:
    url = _deploy(model_dir, max_pending_requests=1, max_replicas=1)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(_complete, url, prompt="Busy", max_tokens=32) for _ in range(10)]
        responses = [f.result() for f in futures]
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "overloaded" in busy.json()["error"]["message"]


def test_a_dead_replica_costs_at_most_503s_and_serving_recovers(model_dir: Path) -> None:
    import ray

    url = _deploy(model_dir, max_replicas=1)
    [replica] = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#Policy#")
    ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 48 requests, 8 at a time
        futures = [pool.submit(_complete, url, prompt="Lost", max_tokens=32) for _ in range(48)]
        time.sleep(0.5)  # under load
        ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
        responses = [f.result() for f in futures]  # none hangs past the client's timeout
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    for lost in (r for r in responses if r.status_code == 503):
        assert lost.headers["retry-after"] == "1", lost.json()
    deadline = time.monotonic() + 60  # Serve starts a new replica
    while _complete(url, prompt="Back", max_tokens=4).status_code != 200:
        assert time.monotonic() < deadline, "serving never recovered"
        time.sleep(0.5)
    after = [_complete(url, prompt="Back", max_tokens=4, seed=i).status_code for i in range(8)]
    assert after == [200] * 8


def test_bon_mode_returns_the_best_scoring_of_n_samples(model_dir: Path) -> None:
    from reward_fns import letter_e_share

    url = _deploy(model_dir, max_replicas=1)
    prompt = "The acting"
    draws = _complete(url, prompt=prompt, max_tokens=10, n=4, seed=11).json()["choices"]
    texts = [c["text"] for c in draws]
    rewards = letter_e_share([prompt] * 4, texts)
    expected = texts[rewards.index(max(rewards))]

    bon_url = _deploy(model_dir, max_replicas=1, bon_n=4)
    best = _complete(bon_url, prompt=prompt, max_tokens=10, seed=11).json()["choices"]
    assert [c["text"] for c in best] == [expected]
    assert "Scorer" in serve.status().applications[APP_NAME].deployments


def test_a_model_that_cannot_load_is_one_line_before_any_replica(tmp_path: Path) -> None:
    cfg = parse_workflow({"serving": {"port": PORT}})
    with pytest.raises(ModelLoadError, match=r"cannot load the tokenizer .* local folder"):
        serve_model(cfg, tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="unknown built-in model"):
        serve_model(cfg, "builtin:nope")


def test_api_key(model_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("VBON_TEST_KEY", raising=False)
    cfg = parse_workflow({"serving": {"api_key_env": "VBON_TEST_KEY", "port": PORT}})
    with pytest.raises(ConfigError, match="VBON_TEST_KEY"):
        serve_model(cfg, model_dir)
    monkeypatch.setenv("VBON_TEST_KEY", "s3cret")
    url = _deploy(model_dir, api_key_env="VBON_TEST_KEY", max_replicas=1)
    assert _complete(url, prompt="Hi", max_tokens=2).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hi"}, headers=wrong)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
    assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices
