"""Typed workflow configuration: one pydantic model per concern, validated once at the edge.

A workflow YAML maps onto `WorkflowConfig`. Every mistake (unknown key, wrong type, impossible value)
becomes one line naming the key path, the bad value and what is allowed, raised as `ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vbon.errors import ConfigError
from vbon.methods import METHODS, get_method, method_label

MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]


class _Section(BaseModel):
    """A config section; `renamed` maps old keys to the one-line hint that replaces them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, hint in cls.renamed.items():
                if old in data:
                    raise ValueError(f"key '{old}' was renamed: {hint}")
        return data


class ModelConfig(_Section):
    """The reference policy (and the initial trained policy).

    `name_or_path` is a hub name, a local folder, or a built-in offline model:
    `builtin:tiny` (a tiny GPT-2) or `builtin:smollm2-135m-instruct`. `dtype: auto` keeps the
    checkpoint's dtype; `bfloat16_if_native` picks bfloat16 on each machine that computes it
    natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX) and float32 elsewhere.
    """

    name_or_path: str = "builtin:tiny"
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16", "bfloat16_if_native"] = "float32"
    trust_remote_code: bool = False


class VaderReward(_Section):
    """VADER sentiment compound score of the completion, in [-1, 1]."""

    kind: Literal["vader"] = "vader"


class ClassifierReward(_Section):
    """A Hugging Face sequence classifier; `label` picks the logit by name or index."""

    kind: Literal["hf_classifier"]
    name_or_path: str
    label: str | int = 1
    output: Literal["logit", "log_prob", "prob"] = "logit"
    score_prompt: bool = False
    max_length: int = Field(512, ge=8)
    batch_size: int = Field(32, ge=1)
    trust_remote_code: bool = False


class CallableReward(_Section):
    """A Python function `module:function(prompts, completions) -> list[float]`."""

    kind: Literal["callable"]
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class HttpReward(_Section):
    """A remote scorer: POST {"prompts": [...], "completions": [...]} -> {"rewards": [...]}."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    batch_size: int = Field(64, ge=1)


RewardConfig = Annotated[
    VaderReward | ClassifierReward | CallableReward | HttpReward, Field(discriminator="kind")
]


class DataConfig(_Section):
    """Prompts: a local JSON/JSONL/CSV/Parquet file, a hub data set, or `builtin:movie-reviews`.

    `prompt_words` keeps only the first words of each text (the paper's IMDB prompts are the
    openings of reviews)."""

    source: str = "builtin:movie-reviews"
    prompt_column: str = "prompt"
    split: str = "train"
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    max_prompts: int | None = Field(None, ge=1)
    prompt_words: int | None = Field(None, ge=1)
    chat_template: bool = False
    seed: int = 0


class SamplingConfig(_Section):
    """Generation settings, shared by reference sampling, training rollouts, evaluation and serving
    (top_k = 0 and top_p = 1 switch those filters off). `shard_size`: sequences per sampling shard
    (the unit of work of one actor call, written as one Parquet file)."""

    renamed: ClassVar[dict[str, str]] = {"batch_size": "use sampling.shard_size"}

    max_new_tokens: int = Field(24, ge=1, le=8192)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    shard_size: int = Field(16, ge=1)
    seed: int = 0


class TrainingConfig(_Section):
    """Policy optimisation. `algorithm` names a method of `vbon.methods.METHODS`: the vBoN ones
    use beta = 1/(N-1); `kl_rl` uses `beta` on the raw reward. `estimator` is the advantage
    estimator of the RL term (the optimiser is AdamW). `jeffreys_lambda` weighs the forward KL
    of `jeffreys`; `bonbon_alpha` is BoNBoN's SFT share (the authors' 0.005); `distill_steps` > 0 warm-starts an RL method with that many `bon_distill` steps;
    `reference_steps` > 0 then takes that many steps of the method's own RL objective on the cached
    reference samples (`samples_per_prompt` of each prompt's M, importance-weighted by pi / pi_ref:
    no generation). Both come first and count towards `steps`. Every `eval_every` steps (0: never) the policy's
    win rate on `eval_prompts` held-out prompts is logged: the learning curve against BoN.
    `prefix_baseline` (RLOO): the reward scorer also scores every prefix of each completion, and
    the method's score of the prefix y_<t is the value V(s_t) of per-token GAE(`gamma`,
    `gae_lambda`) advantages (1.0: unbiased), centred per position over the prompt's samples;
    it costs one reward call per completion token."""

    renamed: ClassVar[dict[str, str]] = {
        "optimizer": "use training.estimator (ppo or rloo)",
        "ppo_epochs": "use training.update_epochs",
        "vbon_reward": "use training.algorithm: vbon (the l1 reward) or vbon_exact",
    }

    algorithm: MethodName = "vbon"
    estimator: Literal["ppo", "rloo"] = "ppo"
    beta: float | None = Field(None, gt=0.0)
    jeffreys_lambda: float = Field(0.5, ge=0.0, le=1.0)
    bonbon_alpha: float = Field(0.005, ge=0.0, le=1.0)
    distill_steps: int = Field(0, ge=0)
    reference_steps: int = Field(0, ge=0)
    learning_rate: float = Field(1e-5, gt=0.0, lt=1.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = Field(1.0, ge=0.0)
    value_coef: float = Field(0.1, ge=0.0)
    steps: int = Field(100, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    samples_per_prompt: int = Field(1, ge=1)
    update_epochs: int = Field(1, ge=1)
    clip_ratio: float = Field(0.2, gt=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    kl_estimator: Literal["k1", "k3", "full"] = "k1"
    prefix_baseline: bool = False
    trainable: Literal["all", "top_layers", "lora"] = "all"
    top_layers: int = Field(2, ge=1)
    lora_rank: int = Field(8, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    cpu_offload: bool = False
    gather_for_generation: bool = True  # ZeRO-3: generate from the whole policy on each rank
    checkpoint_every: int = Field(50, ge=1)
    max_failures: int = Field(2, ge=0)
    eval_every: int = Field(0, ge=0)
    eval_prompts: int = Field(16, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _method_needs(self) -> TrainingConfig:
        method = get_method(self.algorithm)
        if method.kl == "config" and self.beta is None:
            raise ValueError(
                f"algorithm '{self.algorithm}' needs training.beta (a KL coefficient > 0)"
            )
        if method.kl != "config" and self.beta is not None:
            fixed = "fixes beta = 1/(N-1)" if method.kl == "bon" else "has no KL coefficient"
            raise ValueError(f"algorithm '{self.algorithm}' {fixed}; remove training.beta")
        if method.uses_rollouts and method.uses_cached and self.estimator != "rloo":
            raise ValueError(
                f"algorithm '{self.algorithm}' mixes in the reverse KL at its own scale, which "
                "needs unwhitened advantages: set training.estimator: rloo"
            )
        rloo_only = self.estimator != "rloo" or method.uses_cached or not method.uses_rollouts
        if self.prefix_baseline and rloo_only:
            raise ValueError(
                "training.prefix_baseline gives RLOO per-token advantages: it needs "
                "training.estimator: rloo and a method without a cached term (vbon, vbon_exact, "
                "kl_rl)"
            )
        if method.uses_rollouts and self.estimator == "rloo" and self.samples_per_prompt < 2:
            raise ValueError("estimator 'rloo' needs training.samples_per_prompt >= 2")
        for key in ("distill_steps", "reference_steps"):
            if getattr(self, key) and not method.uses_rollouts:
                raise ValueError(
                    f"training.{key} warm-starts an RL method; '{self.algorithm}' has no RL term"
                )
        if self.reference_steps and (self.estimator != "rloo" or method.uses_cached):
            raise ValueError(
                "training.reference_steps importance-weights whole sequences: it needs "
                "training.estimator: rloo and a method without a cached term (vbon, vbon_exact, "
                "kl_rl)"
            )
        if self.distill_steps + self.reference_steps >= self.steps:
            raise ValueError(
                f"training.distill_steps + reference_steps "
                f"({self.distill_steps + self.reference_steps}) must be below training.steps "
                f"({self.steps}): the warm start counts towards the steps"
            )
        return self


class EvaluationConfig(_Section):
    """Held-out evaluation on the test prompts: BoN at each of `n_values` (each <= M) from the
    cached samples, and `samples_per_prompt` fresh samples of each trained policy; `bootstrap`
    resamples of the prompts give 95% intervals (0 turns them off)."""

    n_values: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4])
    samples_per_prompt: int = Field(4, ge=1)
    max_prompts: int | None = Field(None, ge=2)
    batch_size: int = Field(32, ge=1)
    num_examples: int = Field(3, ge=0)
    bootstrap: int = Field(1000, ge=0)


class ServingConfig(_Section):
    """The Ray Serve endpoint: bound to loopback unless `host` says otherwise.

    Requests beyond `max_pending_requests` in flight get 503 with Retry-After. `bon_n` serves
    Best-of-N from the reference instead of one sample of the trained policy."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str | None = None
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    max_prompt_tokens: int = Field(512, ge=1)
    max_tokens: int = Field(256, ge=1)
    max_n: int = Field(8, ge=1)
    max_batch_size: int = Field(64, ge=1)  # requests decoding together at most
    batch_wait_ms: float = Field(10.0, ge=0)  # idle replica: a burst ends after this quiet
    batch_max_wait_ms: float = Field(100.0, ge=0)  # ... or this long after its first request
    max_pending_requests: int = Field(64, ge=1)
    drain_s: float = Field(
        30.0, ge=0
    )  # on SIGTERM / Ctrl-C: how long requests in flight may finish
    cpus_per_replica: float = Field(1.0, ge=0)
    gpus_per_replica: float = Field(0.0, ge=0)
    bon_n: int | None = Field(None, ge=2)
    # HeadOnly: the HTTP proxy and the ingress run on the head node only, so a worker node's loss
    # costs only its policy replica (and every node may share one address, as on loopback)
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"

    @model_validator(mode="after")
    def _replicas(self) -> ServingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serving.min_replicas ({self.min_replicas}) exceeds "
                f"serving.max_replicas ({self.max_replicas})"
            )
        return self


class ResourcesConfig(_Section):
    """Where work runs: `ray_address` None starts a local in-process Ray."""

    ray_address: str | None = None
    sampling_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    train_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, ge=0)
    gpus_per_worker: float = Field(0.0, ge=0)


class WorkflowConfig(_Section):
    """One vBoN workflow: N (the Best-of-N target) and M (reference samples per prompt)."""

    name: str = Field("vbon", pattern=r"^[\w.-]+$")
    run_dir: str = "runs"
    n: int = Field(4, ge=2)
    m: int = Field(16, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    reward: RewardConfig = Field(default_factory=VaderReward)
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _n_within_m(self) -> WorkflowConfig:
        if self.m < self.n:
            raise ValueError(f"m ({self.m}) must be >= n ({self.n}): BoN needs N of the M samples")
        if self.training.prompts_per_step % self.resources.train_workers:
            raise ValueError(
                f"training.prompts_per_step ({self.training.prompts_per_step}) must be a multiple "
                f"of resources.train_workers ({self.resources.train_workers})"
            )
        t = self.training
        if t.reference_steps and t.samples_per_prompt > self.m - 1:
            raise ValueError(
                f"training.reference_steps draws samples_per_prompt ({t.samples_per_prompt}) of "
                f"each prompt's m ({self.m}) cached samples and scores each against the others: "
                f"set samples_per_prompt <= {self.m - 1}"
            )
        k = t.samples_per_prompt
        if get_method(t.algorithm).pairwise and (k % self.n or k > self.m):
            raise ValueError(
                f"training.samples_per_prompt ({k}) must be a multiple of n ({self.n}) and at most "
                f"m ({self.m}): '{t.algorithm}' draws it from each prompt's m cached samples in "
                f"groups of n, e.g. samples_per_prompt: {self.n * min(2, self.m // self.n)}"
            )
        too_big = [k for k in self.evaluation.n_values if k > self.m]
        if too_big:
            raise ValueError(f"evaluation.n_values {too_big} exceed m ({self.m})")
        return self

    @property
    def beta(self) -> float:
        """The KL coefficient of the run's RL term: 1/(N-1) for vBoN, `training.beta` for KL-RL,
        0 for methods without one."""
        return get_method(self.training.algorithm).beta(self.n, self.training.beta) or 0.0

    @property
    def method_label(self) -> str:
        """The trained policy's name in results and plots (see `vbon.methods.method_label`)."""
        t = self.training
        return method_label(t.algorithm, t.beta, t.jeffreys_lambda, t.distill_steps)


_REWARD_KINDS: dict[str, type[BaseModel]] = {
    get_args(m.model_fields["kind"].annotation)[0]: m
    for m in (VaderReward, ClassifierReward, CallableReward, HttpReward)
}


_PATTERN_HINTS = {
    "function": "must be 'module:function', e.g. 'my_rewards:score'",
    "url": "must start with http:// or https://",
    "name": "must use only letters, digits, '.', '_' and '-'",
}


def _lookup(data: Any, loc: tuple) -> Any:
    for key in loc:
        if (isinstance(data, dict) and key in data) or (
            isinstance(data, list) and isinstance(key, int) and key < len(data)
        ):
            data = data[key]
        else:
            return None
    return data


def _section_model(loc: tuple, raw: Any) -> type[BaseModel] | None:
    """The config class that the mapping at `loc` is validated against."""
    model: type[BaseModel] = WorkflowConfig
    for i, key in enumerate(loc):
        field = model.model_fields.get(str(key))
        if field is None:
            return None
        if key == "reward":
            model = _REWARD_KINDS.get(_lookup(raw, (*loc[: i + 1], "kind")), VaderReward)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
        else:
            return None
    return model


def _format_error(err: dict, raw: Any) -> str:
    """One line: `key.path = value: what is allowed`."""
    loc = tuple(k for k in err["loc"] if k not in _REWARD_KINDS)
    path = ".".join(str(k) for k in loc) or "<top level>"
    kinds = ", ".join(_REWARD_KINDS)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _section_model(loc[:-1], raw)
        allowed = ", ".join(parent.model_fields) if parent else "see README"
        return f"{path}: unknown key; allowed keys here: {allowed}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "union_tag_invalid":
        return f"{path}.kind = {_lookup(raw, (*loc, 'kind'))!r}: must be one of {kinds}"
    if kind == "union_tag_not_found":
        return f"{path}.kind: required key is missing; must be one of {kinds}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_HINTS:
        return f"{path} = {err.get('input')!r}: {_PATTERN_HINTS[loc[-1]]}"
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if kind == "value_error":
        return f"{path}: {msg}"
    return f"{path} = {err.get('input')!r}: {msg}"


def parse_workflow(raw: Any, source: str = "<config>") -> WorkflowConfig:
    """Validate a parsed YAML mapping; raise `ConfigError` with one line per problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}"
        )
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {_format_error(e, raw)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_workflow(path: str | Path) -> WorkflowConfig:
    """Read and validate a workflow YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such workflow file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_workflow(raw, source=str(path))
