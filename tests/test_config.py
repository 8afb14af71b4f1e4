"""The typed config: every malformed workflow gives one line naming key, value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vbon.config import WorkflowConfig, load_workflow, parse_workflow
from vbon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

BAD = [
    ({"n": 1}, "n = 1: must be greater than or equal to 2"),
    ({"m": 0}, "m = 0: must be greater than or equal to 1"),
    ({"n": 8, "m": 4}, "m (4) must be >= n (8)"),
    ({"sampling": {"temperature": -0.5}}, "sampling.temperature = -0.5: must be greater than 0"),
    ({"training": {"zero_stage": 4}}, "training.zero_stage = 4: must be 0, 1, 2 or 3"),
    ({"n": "four"}, "n = 'four': must be a valid integer"),
    ({"modle": {}}, "modle: unknown key; allowed keys here: name, run_dir, n, m, model"),
    (
        {"sampling": {"temprature": 1.0}},
        "sampling.temprature: unknown key; allowed keys here: max_new_tokens",
    ),
    ({"reward": {"kind": "gpt4"}}, "reward.kind = 'gpt4': must be one of vader, hf_classifier"),
    ({"reward": {"kind": "hf_classifier"}}, "reward.name_or_path: required key is missing"),
    (
        {"reward": {"kind": "callable", "function": "no colon"}},
        "reward.function = 'no colon': must be 'module:function'",
    ),
    (
        {"reward": {"kind": "http", "url": "ftp://x"}},
        "reward.url = 'ftp://x': must start with http:// or https://",
    ),
    (
        {"reward": {"kind": "vader", "label": 1}},
        "reward.label: unknown key; allowed keys here: kind",
    ),
    ({"sampling": {"top_p": 1.5}}, "sampling.top_p = 1.5: must be less than or equal to 1"),
    (
        {"training": {"algorithm": "dpo"}},
        "training.algorithm = 'dpo': must be 'vbon', 'vbon_exact', 'kl_rl', 'bon_sft', "
        "'bon_distill', 'jeffreys' or 'bonbon'",
    ),
    (
        {"training": {"optimizer": "rloo"}},
        "training: key 'optimizer' was renamed: use training.estimator (ppo or rloo)",
    ),
    ({"training": {"ppo_epochs": 2}}, "key 'ppo_epochs' was renamed: use training.update_epochs"),
    ({"training": {"vbon_reward": "exact"}}, "use training.algorithm: vbon (the l1 reward) or"),
    ({"sampling": {"batch_size": 8}}, "sampling: key 'batch_size' was renamed: use sampling.shard"),
    ({"training": {"algorithm": "bon_sft", "beta": 0.1}}, "'bon_sft' has no KL coefficient"),
    ({"training": {"algorithm": "bon_sft", "distill_steps": 2}}, "has no RL term"),
    ({"training": {"distill_steps": 100, "steps": 100}}, "reference_steps (100) must be below"),
    ({"training": {"algorithm": "kl_rl"}}, "training: algorithm 'kl_rl' needs training.beta"),
    (
        {"training": {"estimator": "rloo", "reference_steps": 2, "samples_per_prompt": 4}, "m": 4},
        "set samples_per_prompt <= 3",
    ),
    ({"training": {"reference_steps": 2}}, "reference_steps importance-weights whole sequences"),
    ({"training": {"prefix_baseline": True}}, "prefix_baseline gives RLOO per-token advantages"),
    (
        {"training": {"prefix_baseline": True, "estimator": "rloo", "algorithm": "bon_sft"}},
        "it needs training.estimator: rloo and a method without a cached term",
    ),
    ({"training": {"beta": 0.1}}, "training: algorithm 'vbon' fixes beta = 1/(N-1)"),
    (
        {"training": {"algorithm": "bonbon", "samples_per_prompt": 6}, "n": 4, "m": 16},
        "samples_per_prompt (6) must be a multiple of n (4) and at most m (16): 'bonbon' draws",
    ),
    (
        {"training": {"algorithm": "bonbon", "samples_per_prompt": 8}, "n": 4, "m": 6},
        "at most m (6): 'bonbon' draws it from each prompt's m cached samples in groups of n, "
        "e.g. samples_per_prompt: 4",
    ),
    ({"training": {"algorithm": "bonbon", "reference_steps": 2}}, "'bonbon' has no RL term"),
    ({"serving": {"min_replicas": 3, "max_replicas": 2}}, "serving.min_replicas (3) exceeds"),
    ({"evaluation": {"n_values": [1, 64]}, "m": 16}, "evaluation.n_values [64] exceed m (16)"),
    ({"data": {"test_fraction": 1.0}}, "data.test_fraction = 1.0: must be less than 1"),
    ({"model": {"dtype": "int3"}}, "model.dtype = 'int3': must be 'auto', 'float32'"),
    ({"serving": {"port": 70000}}, "serving.port = 70000: must be less than or equal to 65535"),
]


@pytest.mark.parametrize(("raw", "expected"), BAD, ids=[e for _, e in BAD])
def test_bad_config_gives_one_clear_line(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_workflow(raw, source="wf.yaml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("wf.yaml: ")
    assert "Traceback" not in message and "pydantic" not in message


def test_every_error_is_reported_on_its_own_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_workflow({"n": 0, "sampling": {"temperature": -1}})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert {line.split(":")[1].strip().split(" =")[0] for line in lines} == {
        "n",
        "sampling.temperature",
    }


def test_defaults_are_valid_and_beta_follows_n() -> None:
    cfg = parse_workflow({"n": 5, "m": 10})
    assert cfg == WorkflowConfig(n=5, m=10)
    assert cfg.beta == pytest.approx(0.25) and cfg.method_label == "vBoN (l1)"
    kl_rl = parse_workflow({"training": {"algorithm": "kl_rl", "beta": 0.05}})
    assert kl_rl.beta == 0.05 and kl_rl.method_label == "KL-RL beta=0.05"
    assert parse_workflow({"training": {"algorithm": "bon_distill"}}).beta == 0.0
    warm = parse_workflow(
        {
            "training": {
                "algorithm": "jeffreys",
                "estimator": "rloo",
                "samples_per_prompt": 2,
                "distill_steps": 4,
            }
        }
    )
    assert warm.method_label == "Jeffreys lambda=0.5 + distill warm start"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_workflow(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("n: 4\nsampling: {max_new_tokens: 3\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_workflow(path)


def test_cli_validate_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"training": {"zero_stage": 7}}))
    proc = subprocess.run(
        [sys.executable, "-m", "vbon.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"vbon: error: {path}: training.zero_stage = 7: must be 0, 1, 2 or 3"
    ]
    assert "Traceback" not in proc.stderr


def test_cli_validate_missing_file_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vbon.cli", "validate", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "no such workflow file" in proc.stderr


def test_every_shipped_workflow_validates() -> None:
    files = sorted((ROOT / "workflows").glob("*.yaml"))
    assert files, "no workflow files found"
    for path in files:
        load_workflow(path)
