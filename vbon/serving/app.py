"""The Ray Serve application: an HTTP ingress speaking the OpenAI API, an autoscaled policy
deployment that batches requests into `generate` calls, and (BoN mode) a reward deployment.

    client ──HTTP──► Ingress (auth, validation, caps, overload) ──handle──► Policy (batched)
                                                               └─handle──► Scorer (BoN mode)
"""

import asyncio
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError
from starlette.exceptions import HTTPException

from vbon.config import ModelConfig, RewardConfig, ServingConfig
from vbon.rewards import build_scorer
from vbon.sampling.generate import row_seed
from vbon.serving.batching import ContinuousBatcher
from vbon.serving.engine import CompletionEngine, Job
from vbon.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    ChatStream,
    CompletionRequest,
    CompletionStream,
    chat_body,
    chat_logprobs,
    completion_body,
    completion_logprobs,
    stream_chunks,
    usage,
    validation_message,
)

APP_NAME = "vbon"
BATCH_HEADER = "x-vbon-batch-size"  # how many requests shared the generate call
REPLICA_LOST = (ActorDiedError, ActorUnavailableError)  # a replica (or its node) died mid-request
MAX_BODY_BYTES = 2**21  # larger request bodies get 413
HEAD_NODE = "node:__internal_head__"  # the resource Ray gives the head node alone


@serve.deployment(name="Policy")
class PolicyDeployment:
    """The served model, continuously batched (`batching.ContinuousBatcher`): a request joins the
    running decode at the next step, on the engine's own thread, so the replica keeps taking
    requests; a stream gets every decoding step's text."""

    def __init__(self, model: ModelConfig, serving: ServingConfig) -> None:
        gpu = serving.gpus_per_replica > 0 and torch.cuda.is_available()
        if not gpu:
            torch.set_num_threads(max(1, int(serving.cpus_per_replica)))
        self.engine = CompletionEngine(model, "cuda" if gpu else "cpu")
        self.batcher = ContinuousBatcher(
            self.engine,
            max_jobs=serving.max_batch_size,
            gap_s=serving.batch_wait_ms / 1000,
            max_wait_s=serving.batch_max_wait_ms / 1000,
        )

    async def generate(self, job: Job) -> list[dict]:
        return await self.batcher.submit(job)

    async def stream(self, job: Job):
        """`generate`, streamed: per decoding step, the job's new events (`engine.step`)."""
        steps: asyncio.Queue = asyncio.Queue()
        done = asyncio.ensure_future(self.batcher.submit(job, steps.put_nowait))
        done.add_done_callback(lambda f: steps.put_nowait(None if f.cancelled() else f.exception()))
        while (events := await steps.get()) is not None:
            if isinstance(events, BaseException):
                raise events
            yield events


@serve.deployment(name="Scorer")
class ScorerDeployment:
    """The reward model, for BoN mode."""

    def __init__(self, reward: RewardConfig) -> None:
        self.scorer = build_scorer(reward)

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return self.scorer.score(prompts, completions)


api = FastAPI(title="vbon", docs_url=None, redoc_url=None)


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = validation_message(exc.errors())
    return JSONResponse(APIError(400, message, param).body(), status_code=400)


@api.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    """Routing and body-parsing errors (404, 405, unparsable bodies) in the OpenAI body."""
    messages = {
        404: f"unknown route: {request.method} {request.url.path}",
        405: f"method {request.method} is not allowed on {request.url.path}",
    }
    message = messages.get(exc.status_code, f"could not read the request: {exc.detail}")
    return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)


@api.exception_handler(Exception)
async def _internal(request: Request, exc: Exception) -> JSONResponse:
    """A server fault (never a client's input): still the OpenAI body, without internals."""
    err = APIError(500, f"internal server error ({type(exc).__name__}); see the replica's log")
    return JSONResponse(err.body(), status_code=500)


@api.middleware("http")
async def _body_limit(request: Request, call_next):
    size = request.headers.get("content-length", "0")
    if not size.isdigit() or int(size) > MAX_BODY_BYTES:
        err = APIError(413, f"request body over {MAX_BODY_BYTES} bytes (or a bad content-length)")
        return JSONResponse(err.body(), status_code=413)
    return await call_next(request)


def _sse(events) -> StreamingResponse:
    """Server-sent events: one `data:` line per chunk of an (async) iterable, then
    `data: [DONE]`. A fault mid-stream, after the 200 went out, ends it with an error event."""

    async def lines():
        try:
            if hasattr(events, "__aiter__"):
                async for event in events:
                    yield f"data: {json.dumps(event)}\n\n"
            else:
                for event in events:
                    yield f"data: {json.dumps(event)}\n\n"
        except Exception as e:
            err = APIError(500, f"the stream broke off ({type(e).__name__}); retry the request")
            yield f"data: {json.dumps(err.body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


def _completion_view(choice: dict, logprobs: bool) -> None:
    """The completions text (the prompt first, with echo), its logprobs object, and the pieces
    a stream sends (the echoed prompt as one piece)."""
    entries = choice["logprobs"]
    prompt = choice["prompt_pieces"]
    head = "".join(prompt) if prompt is not None else ""
    skip = len(prompt) if prompt is not None else 0
    pieces, at = [], 0
    if prompt is not None:
        lp = completion_logprobs(entries[:skip]) if logprobs else None
        pieces.append({"text": head, "logprobs": lp})
        at = len(head)
    for i, text in enumerate(choice["pieces"]):
        lp = completion_logprobs([entries[skip + i]], at) if logprobs else None
        pieces.append({"text": text, "logprobs": lp})
        at += len(text)
    choice["text"] = head + choice["text"]
    choice["logprobs"] = completion_logprobs(entries) if logprobs else None
    choice["pieces"] = pieces


def _chat_view(choice: dict, logprobs: bool) -> None:
    """The chat logprobs object and the pieces a stream sends."""
    entries = choice["logprobs"]
    choice["pieces"] = [
        {"text": text, "logprobs": None if entries is None else chat_logprobs([entries[i]])}
        for i, text in enumerate(choice["pieces"])
    ]
    choice["logprobs"] = None if entries is None else chat_logprobs(entries)


@dataclass(frozen=True)
class Route:
    """What differs between the completions and chat routes: the stream's chunk format, the
    whole body, and the view that shapes a choice for them."""

    stream: type[CompletionStream]
    body: Callable
    view: Callable[[dict, bool], None]


COMPLETIONS = Route(CompletionStream, completion_body, _completion_view)
CHAT = Route(ChatStream, chat_body, _chat_view)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP front door: bearer-token auth on every route but /healthz, caps from `serving`,
    503 + Retry-After beyond `max_pending_requests` requests in flight."""

    def __init__(
        self,
        policy,
        scorer,
        model: ModelConfig,
        serving: ServingConfig,
        model_name: str,
        api_key: str | None,
    ) -> None:
        from vbon.models import load_tokenizer

        self.policy, self.scorer, self.serving = policy, scorer, serving
        self.streaming = policy.options(stream=True)
        self.tok = load_tokenizer(model)
        self.model_name, self.api_key = model_name, api_key
        self.in_flight = 0
        self.draining = False

    def drain(self) -> int:
        """Stop taking requests (503 + Retry-After, /healthz too); the requests in flight."""
        self.draining = True
        return self.in_flight

    def pending(self) -> int:
        return self.in_flight

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")

    def _encode(self, prompt: str | list[int], add_special: bool) -> list[int]:
        """A prompt's token ids; an empty one starts from BOS (EOS when there is none)."""
        if isinstance(prompt, str):
            ids = self.tok(prompt, add_special_tokens=add_special)["input_ids"]
        else:
            bad = next((t for t in prompt if not 0 <= t < len(self.tok)), None)
            if bad is not None:
                raise APIError(
                    400,
                    f"prompt token id {bad} is outside this model's vocabulary [0, {len(self.tok)})",
                    "prompt",
                )
            ids = list(prompt)
        start = (
            self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        )
        return ids or [start]

    def _check(self, req, prompts: list[list[int]]) -> int:
        """Validate against the caps; the prompt token count."""
        s = self.serving
        req.check()
        if req.model != self.model_name:
            raise APIError(
                404,
                f"model {req.model!r} does not exist; this server serves {self.model_name!r}",
                "model",
                "model_not_found",
            )
        if req.max_tokens is not None and req.max_tokens > s.max_tokens:
            raise APIError(
                400,
                f"max_tokens {req.max_tokens} exceeds this server's cap of {s.max_tokens}",
                "max_tokens",
            )
        if req.n * len(prompts) > s.max_n:
            raise APIError(
                400,
                f"n = {req.n * len(prompts)} completions exceeds this server's cap of {s.max_n}",
                "n",
            )
        longest = max(len(p) for p in prompts)
        if longest > s.max_prompt_tokens:
            raise APIError(
                400,
                f"prompt has {longest} tokens; this server accepts at most {s.max_prompt_tokens}",
                "prompt",
            )
        return sum(len(p) for p in prompts)

    def _jobs(self, req, prompts: list[list[int]], logprobs: int | None, echo: bool) -> list[Job]:
        """One job per prompt: n samples each, or in BoN mode n x bon_n draws."""
        draws = self.serving.bon_n or 1
        base = req.seed if req.seed is not None else secrets.randbits(62)
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        return [
            Job(
                prompt_ids=tuple(p),
                seeds=tuple(row_seed(base, i, j) for j in range(req.n * draws)),
                max_tokens=min(max_tokens, self.serving.max_tokens),
                temperature=req.temperature,
                top_p=req.top_p,
                stop=tuple(req.stop_list()),
                logprobs=logprobs,
                echo=echo,
            )
            for i, p in enumerate(prompts)
        ]

    def _admit(self) -> None:
        """Count a request in flight, or turn it away (503 + Retry-After)."""
        if self.draining:
            raise APIError(503, "server shutting down: not taking new requests")
        if self.in_flight >= self.serving.max_pending_requests:
            raise APIError(503, "server overloaded: too many requests in flight; retry shortly")
        self.in_flight += 1

    async def _choices(
        self, req, prompts: list[list[int]], raw: list[str], logprobs: int | None, echo: bool
    ) -> list[dict]:
        """n choices per prompt: one sample each, or in BoN mode the best-scoring of bon_n."""
        jobs = self._jobs(req, prompts, logprobs, echo)
        self._admit()
        try:
            samples = await asyncio.gather(*(self._generate(job) for job in jobs))
            if not self.serving.bon_n:
                return [c for per_prompt in samples for c in per_prompt]
            return await self._best_of(samples, raw, req.n, self.serving.bon_n)
        except REPLICA_LOST:
            raise APIError(503, "a replica was lost while answering; retry shortly") from None
        finally:
            self.in_flight -= 1

    async def _generate(self, job: Job) -> list[dict]:
        """One job on a policy replica. A job whose replica dies (with its node) is sent once
        more, to another replica: its seeds make the answer the same."""
        try:
            return await self.policy.generate.remote(job)
        except REPLICA_LOST:
            return await self.policy.generate.remote(job)

    def _live(self, body, prompts: list[list[int]], used: int, fmt) -> StreamingResponse:
        """A one-sample stream as the replica draws it: text deltas per decoding step, each
        choice's finish_reason as it ends, then the usage chunk when asked."""
        jobs = self._jobs(body, prompts, None, False)
        self._admit()
        streams = [self.streaming.stream.remote(job) for job in jobs]

        async def events():
            try:
                ended = []
                for p, stream in enumerate(streams):
                    for j in range(body.n):
                        for chunk in fmt.opening(p * body.n + j):
                            yield chunk
                    async for step in stream:
                        for e in step:
                            i = p * body.n + e["index"]
                            if "text" in e:
                                yield fmt.piece(i, e["text"])
                            else:
                                ended.append(e["choice"])
                                yield fmt.finish(i, e["choice"]["finish_reason"])
                if body.include_usage():
                    yield fmt.usage(usage(used, ended))
            finally:
                self.in_flight -= 1

        return _sse(events())

    async def _best_of(self, samples, raw: list[str], n: int, draws: int) -> list[dict]:
        flat = [c for per_prompt in samples for c in per_prompt]
        prompts = [raw[i] for i, per_prompt in enumerate(samples) for _ in per_prompt]
        rewards = await self.scorer.score.remote(prompts, [c["text"] for c in flat])
        best = []
        for start in range(0, len(flat), draws):
            block = rewards[start : start + draws]
            best.append(flat[start + block.index(max(block))])  # first draw wins ties
        return best

    async def _respond(self, route: Route, body, response, prompts, raw, logprobs, echo):
        """The whole body, or its server-sent-event stream: token by token in one-sample mode
        without logprobs or echo; otherwise once the answer (in BoN mode the pick) is ready."""
        used = self._check(body, prompts)
        if body.stream and not self.serving.bon_n and logprobs is None and not echo:
            return self._live(body, prompts, used, route.stream(self.model_name))
        choices = await self._choices(body, prompts, raw, logprobs, echo)
        for c in choices:
            route.view(c, logprobs is not None)
        batch = str(max(c["batch"] for c in choices))
        if body.stream:
            u = usage(used, choices) if body.include_usage() else None
            stream = _sse(stream_chunks(route.stream(self.model_name), choices, u))
            stream.headers[BATCH_HEADER] = batch
            return stream
        response.headers[BATCH_HEADER] = batch
        return route.body(self.model_name, choices, used)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        if self.draining:
            raise APIError(503, "server shutting down")
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "vbon"}],
        }

    @api.post("/v1/completions")
    async def completions(self, request: Request, response: Response, body: CompletionRequest):
        self._authorize(request)
        prompts = [self._encode(p, add_special=True) for p in body.prompts()]
        raw = [p if isinstance(p, str) else self.tok.decode(p) for p in body.prompts()]
        return await self._respond(
            COMPLETIONS, body, response, prompts, raw, body.logprobs, body.echo
        )

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request, response: Response, body: ChatCompletionRequest):
        self._authorize(request)
        if not self.tok.chat_template:
            raise APIError(
                400,
                f"model {self.model_name!r} has no chat template; use /v1/completions",
                "messages",
            )
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts = [self._encode(prompt, add_special=False)]
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        top = (body.top_logprobs or 0) if body.logprobs else None
        return await self._respond(CHAT, body, response, prompts, [last_user], top, echo=False)


def build_app(
    model: ModelConfig,
    serving: ServingConfig,
    reward: RewardConfig,
    model_name: str,
    api_key: str | None,
) -> serve.Application:
    """Ingress + autoscaled Policy (+ Scorer when `serving.bon_n` is set)."""
    policy = PolicyDeployment.options(
        autoscaling_config={
            "min_replicas": serving.min_replicas,
            "max_replicas": serving.max_replicas,
            "target_ongoing_requests": serving.target_ongoing_requests,
            "upscale_delay_s": serving.upscale_delay_s,
            "downscale_delay_s": serving.downscale_delay_s,
        },
        ray_actor_options={
            "num_cpus": serving.cpus_per_replica,
            "num_gpus": serving.gpus_per_replica,
        },
        max_ongoing_requests=max(
            serving.max_batch_size * 2, int(serving.target_ongoing_requests * 2)
        ),
    ).bind(model, serving)
    scorer = None
    if serving.bon_n:
        scorer = ScorerDeployment.options(ray_actor_options={"num_cpus": 0}).bind(reward)
    ingress = {"num_cpus": 0}
    if serving.proxy_location == "HeadOnly":  # beside the proxy (Ray's own head-node resource)
        ingress["resources"] = {HEAD_NODE: 0.001}
    return Ingress.options(
        ray_actor_options=ingress,
        max_ongoing_requests=serving.max_pending_requests + 32,
    ).bind(policy, scorer, model, serving, model_name, api_key)
