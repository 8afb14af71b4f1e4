"""Model loading through the real `from_pretrained` path, on models built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from vbon.config import ModelConfig
from vbon.errors import ModelLoadError
from vbon.models import load_causal_lm, load_tokenizer


def test_tiny_round_trip_through_from_pretrained(tiny_path: Path) -> None:
    files = {p.name for p in tiny_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    cfg = ModelConfig(name_or_path=str(tiny_path))
    tok, model = load_tokenizer(cfg), load_causal_lm(cfg)
    assert isinstance(model, GPT2LMHeadModel)
    assert tok.padding_side == "left" and tok.pad_token is not None
    text = "I went into this black-and-white war film with no expectations, and"
    assert tok.decode(tok(text).input_ids) == text
    enc = tok([text], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=12, do_sample=True, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc.input_ids.shape[1]


def _cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("needs /proc/cpuinfo to read the CPU's flags")
    return {
        f
        for line in info.read_text().splitlines()
        if line.startswith("flags")
        for f in line.split()
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16_if_native"])
def test_dtype_is_the_named_one_or_bf16_only_where_the_cpu_has_it(
    tiny_path: Path, dtype: str
) -> None:
    native = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    want = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        dtype, torch.bfloat16 if native else torch.float32
    )
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_path), dtype=dtype))
    assert {p.dtype for p in model.parameters()} == {want}


def test_builtin_name_and_folder_load_the_same_weights(tiny_path: Path) -> None:
    a = load_causal_lm(ModelConfig(name_or_path="builtin:tiny"))
    b = load_causal_lm(ModelConfig(name_or_path=str(tiny_path)))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_tiny_model_learned_its_corpus(tiny_path: Path) -> None:
    """The pretraining step makes the tiny model far better than chance on review text."""
    cfg = ModelConfig(name_or_path=str(tiny_path))
    tok, model = load_tokenizer(cfg), load_causal_lm(cfg)
    enc = tok(["I laughed, I cried, and I would happily watch it again."], return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc.input_ids).loss
    assert loss < 0.5 * torch.log(torch.tensor(float(len(tok))))


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"cannot load the model from model.name_or_path"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "missing")))


def test_unknown_builtin_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown built-in model; choose one of builtin:tiny"):
        load_causal_lm(ModelConfig(name_or_path="builtin:gpt5"))


def test_pickle_weights_are_refused(tiny_path: Path, tmp_path: Path) -> None:
    """Safetensors only: a folder holding only pytorch_model.bin does not load."""
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_path)))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path)))


@pytest.mark.slow
def test_smollm2_loads_offline_and_writes_english() -> None:
    cfg = ModelConfig(name_or_path="builtin:smollm2-135m-instruct")
    tok, model = load_tokenizer(cfg), load_causal_lm(cfg)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    enc = tok(["The capital of France is"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1] :])
    enc = tok(
        ["I rented this French romance set in a bakery on a rainy Sunday and"], return_tensors="pt"
    )
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=30, do_sample=True, pad_token_id=tok.pad_token_id)
    words = tok.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True).split()
    common = {"the", "a", "and", "to", "of", "it", "i", "was", "in", "that", "is", "with", "my"}
    assert len(words) >= 10
    assert sum(w.lower().strip(".,!?") in common for w in words) >= 2
