"""The Ray Serve application: an HTTP ingress speaking the OpenAI API, an autoscaled policy
deployment that batches requests into `generate` calls, and (BoN mode) a reward deployment.

    client ──HTTP──► Ingress (auth, validation, caps, overload) ──handle──► Policy (batched)
                                                               └─handle──► Scorer (BoN mode)
"""

import hmac
import secrets

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve

from vbon.config import ModelConfig, RewardConfig, ServingConfig
from vbon.rewards import build_scorer
from vbon.sampling.generate import row_seed
from vbon.serving.engine import CompletionEngine, Job
from vbon.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_body,
    completion_body,
    validation_message,
)

APP_NAME = "vbon"
BATCH_HEADER = "x-vbon-batch-size"  # how many requests shared the generate call


@serve.deployment(name="Policy")
class PolicyDeployment:
    """The served model; jobs arriving within `batch_wait_ms` share one batched call."""

    def __init__(self, model: ModelConfig, serving: ServingConfig) -> None:
        gpu = serving.gpus_per_replica > 0 and torch.cuda.is_available()
        if not gpu:
            torch.set_num_threads(max(1, int(serving.cpus_per_replica)))
        self.engine = CompletionEngine(model, "cuda" if gpu else "cpu")
        self.generate.set_max_batch_size(serving.max_batch_size)
        self.generate.set_batch_wait_timeout_s(serving.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate(self, jobs: list[Job]) -> list[list[dict]]:
        return self.engine.run(jobs)


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
        self.tok = load_tokenizer(model)
        self.model_name, self.api_key = model_name, api_key
        self.in_flight = 0

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")

    def _check(self, req, prompts: list[str], add_special: bool) -> int:
        """Validate against the caps; the prompt token count."""
        s = self.serving
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
        counts = [len(self.tok(p, add_special_tokens=add_special)["input_ids"]) for p in prompts]
        if max(counts, default=0) > s.max_prompt_tokens:
            raise APIError(
                400,
                f"prompt has {max(counts)} tokens; this server accepts at most {s.max_prompt_tokens}",
                "prompt",
            )
        return sum(counts)

    async def _choices(
        self, req, prompts: list[str], raw: list[str], add_special: bool
    ) -> list[dict]:
        """n choices per prompt: one sample each, or in BoN mode the best-scoring of bon_n."""
        draws = self.serving.bon_n or 1
        base = req.seed if req.seed is not None else secrets.randbits(62)
        jobs = [
            Job(
                prompt=p,
                seeds=tuple(row_seed(base, i, j) for j in range(req.n * draws)),
                max_tokens=req.max_tokens or min(16, self.serving.max_tokens),
                temperature=req.temperature,
                top_p=req.top_p,
                stop=tuple(req.stop_list()),
                add_special_tokens=add_special,
            )
            for i, p in enumerate(prompts)
        ]
        if self.in_flight >= self.serving.max_pending_requests:
            raise APIError(503, "server overloaded: too many requests in flight; retry shortly")
        self.in_flight += 1
        try:
            samples = [await self.policy.generate.remote(job) for job in jobs]
            if draws == 1:
                return [c for per_prompt in samples for c in per_prompt]
            return await self._best_of(samples, raw, req.n, draws)
        finally:
            self.in_flight -= 1

    async def _best_of(self, samples, raw: list[str], n: int, draws: int) -> list[dict]:
        flat = [c for per_prompt in samples for c in per_prompt]
        prompts = [raw[i] for i, per_prompt in enumerate(samples) for _ in per_prompt]
        rewards = await self.scorer.score.remote(prompts, [c["text"] for c in flat])
        best = []
        for start in range(0, len(flat), draws):
            block = rewards[start : start + draws]
            best.append(flat[start + block.index(max(block))])  # first draw wins ties
        return best

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "vbon"}],
        }

    @api.post("/v1/completions")
    async def completions(
        self, request: Request, response: Response, body: CompletionRequest
    ) -> dict:
        self._authorize(request)
        prompts = body.prompts()
        used = self._check(body, prompts, add_special=True)
        choices = await self._choices(body, prompts, prompts, add_special=True)
        response.headers[BATCH_HEADER] = str(max(c["batch"] for c in choices))
        return completion_body(self.model_name, choices, used)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request, response: Response, body: ChatCompletionRequest) -> dict:
        self._authorize(request)
        if not self.tok.chat_template:
            raise APIError(
                400,
                f"model {self.model_name!r} has no chat template; use /v1/completions",
                "messages",
            )
        messages = [m.model_dump() for m in body.messages]
        prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        used = self._check(body, [prompt], add_special=False)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        choices = await self._choices(body, [prompt], [last_user], add_special=False)
        response.headers[BATCH_HEADER] = str(max(c["batch"] for c in choices))
        return chat_body(self.model_name, choices, used)


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
    return Ingress.options(
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=serving.max_pending_requests + 32,
    ).bind(policy, scorer, model, serving, model_name, api_key)
