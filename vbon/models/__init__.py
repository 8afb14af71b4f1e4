"""Policy and tokenizer loading: hub names, local folders, and the built-in offline models."""

from vbon.models.loading import load_causal_lm, load_tokenizer, resolve_model_path

__all__ = ["load_causal_lm", "load_tokenizer", "resolve_model_path"]
