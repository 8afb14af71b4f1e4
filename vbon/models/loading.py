"""Load a causal LM and its tokenizer through the `transformers` Auto classes.

The same `from_pretrained` path serves hub names, local folders and the built-in offline models
(`builtin:tiny`, `builtin:smollm2-135m-instruct`), which are first built into the cache.
Weights load from safetensors only; remote code runs only when the config turns it on.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from vbon.config import ModelConfig
from vbon.errors import ModelLoadError
from vbon.models import smollm2, tiny

BUILTIN_MODELS = {
    "builtin:tiny": tiny.ensure_tiny,
    "builtin:smollm2-135m-instruct": smollm2.ensure_smollm2,
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU with bf16 support, or a CPU
    with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and several times slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype | str:
    """`model.dtype` on `device`: `bfloat16_if_native` is bfloat16 where `native_bf16`, else
    float32; `auto` stays "auto" (the checkpoint's own dtype); the rest name a torch dtype."""
    if name == "bfloat16_if_native":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return _DTYPES.get(name, "auto")


def resolve_model_path(name_or_path: str) -> str:
    """A hub name or folder as is; a `builtin:` name built (once) and returned as its folder."""
    if name_or_path.startswith("builtin:"):
        if name_or_path not in BUILTIN_MODELS:
            raise ModelLoadError(
                f"model.name_or_path = {name_or_path!r}: unknown built-in model; "
                f"choose one of {', '.join(BUILTIN_MODELS)}"
            )
        return str(BUILTIN_MODELS[name_or_path]())
    return name_or_path


def _load_error(what: str, cfg: ModelConfig, exc: Exception) -> ModelLoadError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(
        f"cannot load {what} from model.name_or_path = {cfg.name_or_path!r}: {reason} "
        "(give a hub name or a local folder with config.json and *.safetensors)"
    )


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer, padded on the left for generation, with a pad token (EOS if it had none)."""
    path = resolve_model_path(cfg.name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _load_error("the tokenizer", cfg, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(cfg: ModelConfig, device: str | torch.device = "cpu") -> PreTrainedModel:
    """The causal LM in `cfg.dtype`, in eval mode, on `device`."""
    path = resolve_model_path(cfg.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            dtype=resolve_dtype(cfg.dtype, device),
        )
    except (OSError, ValueError) as exc:
        raise _load_error("the model", cfg, exc) from None
    return model.to(device).eval()
