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
            dtype=_DTYPES.get(cfg.dtype, "auto"),
        )
    except (OSError, ValueError) as exc:
        raise _load_error("the model", cfg, exc) from None
    return model.to(device).eval()
