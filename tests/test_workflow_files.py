"""Every YAML under workflows/ and cluster/ loads and holds what its consumer requires."""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vbon.config import ModelConfig, load_workflow
from vbon.models import load_causal_lm, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "workflows").glob("*.yaml"))
KUBERAY = sorted((ROOT / "cluster").glob("kuberay-*.yaml"))


def test_the_expected_files_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"quickstart.yaml", "imdb-gpt2.yaml", "tldr-pythia.yaml"}
    assert {p.name for p in KUBERAY} == {"kuberay-rayjob.yaml", "kuberay-rayservice.yaml"}
    assert (ROOT / "cluster" / "ray-cluster-gpu.yaml").is_file()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_validates(path: Path) -> None:
    cfg = load_workflow(path)
    assert cfg.name == path.stem


def test_paper_workflows_follow_the_paper() -> None:
    imdb = load_workflow(ROOT / "workflows" / "imdb-gpt2.yaml")
    assert imdb.model.name_or_path == "lvwerra/gpt2-imdb"
    assert (
        imdb.reward.kind == "hf_classifier"
        and imdb.reward.name_or_path == "lvwerra/distilbert-imdb"
    )
    assert imdb.reward.output == "logit" and imdb.reward.label == "POSITIVE"
    assert imdb.sampling.max_new_tokens == 40 and imdb.sampling.temperature == 1.0
    assert imdb.sampling.top_k == 0 and imdb.training.estimator == "ppo"
    tldr = load_workflow(ROOT / "workflows" / "tldr-pythia.yaml")
    assert tldr.model.name_or_path == "cleanrl/EleutherAI_pythia-2.8b-deduped__sft__tldr"
    assert tldr.reward.name_or_path == "cleanrl/EleutherAI_pythia-2.8b-deduped__reward__tldr"
    assert tldr.sampling.temperature == 0.7 and tldr.sampling.max_new_tokens == 50


def _check_pod_template(template: dict) -> None:
    containers = template["spec"]["containers"]
    assert containers and all(c["name"] and c["image"] for c in containers)


def _check_ray_cluster_spec(spec: dict) -> None:
    """The fields KubeRay's RayCluster spec requires: head group with rayStartParams and a pod
    template; worker groups with a name, replica bounds and a template."""
    assert str(spec["rayVersion"]).startswith("2.")
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    _check_pod_template(head["template"])
    for group in spec.get("workerGroupSpecs", []):
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        _check_pod_template(group["template"])


def _workflow_in(command: list[str]) -> Path:
    return ROOT / next(arg for arg in command if arg.endswith(".yaml"))


def test_kuberay_rayjob() -> None:
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"]["name"]
    entry = shlex.split(doc["spec"]["entrypoint"])
    assert entry[:4] == ["python", "-m", "vbon.cli", "run"]
    load_workflow(_workflow_in(entry))
    assert isinstance(yaml.safe_load(doc["spec"]["runtimeEnvYAML"]), dict)
    _check_ray_cluster_spec(doc["spec"]["rayClusterSpec"])


def test_kuberay_rayservice() -> None:
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay-rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    [app] = serve_config["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert app["args"]["model_dir"] and app["route_prefix"] == "/"
    load_workflow(ROOT / app["args"]["workflow"])
    _check_ray_cluster_spec(doc["spec"]["rayClusterConfig"])


def test_cluster_launcher() -> None:
    doc = yaml.safe_load((ROOT / "cluster" / "ray-cluster-gpu.yaml").read_text())
    assert doc["cluster_name"] and doc["provider"]["type"] and doc["max_workers"] >= 1
    assert doc["head_node_type"] in doc["available_node_types"]
    for node in doc["available_node_types"].values():
        assert "node_config" in node and "resources" in node
    assert any("ray start --head" in c for c in doc["head_start_ray_commands"])


def test_gpu_smoke_script_and_its_workflow() -> None:
    """bench/gpu_smoke.sh parses, and its workflow is the GPU path: CUDA workers, bf16, ZeRO-3,
    served on the port and under the model name that the script requests."""
    script = ROOT / "bench" / "gpu_smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    cfg = load_workflow(ROOT / "workflows" / "gpu-smoke.yaml")
    r, t = cfg.resources, cfg.training
    assert r.gpus_per_worker >= 1 and r.gpus_per_actor >= 1 and cfg.serving.gpus_per_replica >= 1
    assert cfg.model.dtype == "bfloat16" and t.zero_stage == 3
    assert f"PORT={cfg.serving.port}" in text and f'"model": "{cfg.name}"' in text


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_vs_trl_runs_vbon_on_trls_work() -> None:
    """Both sides of bench/train_vs_trl.py get the same work: vbon's workflow is KL-RL with RLOO
    at the shape handed to TRL's runner (which parses; TRL itself lives in .venv-trl)."""
    subprocess.run(
        [sys.executable, "-m", "py_compile", str(ROOT / "bench" / "trl_rloo.py")], check=True
    )
    bench = _bench("train_vs_trl")
    for trainable in ("top_layers", "all"):
        for workers in (1, 2):
            t = bench.workflow(trainable, workers, 6).training
            assert (t.algorithm, t.estimator, t.trainable) == ("kl_rl", "rloo", trainable)
            assert (t.prompts_per_step, t.samples_per_prompt, t.beta, t.learning_rate) == tuple(
                bench.SHAPE[k]
                for k in ("prompts_per_step", "samples_per_prompt", "beta", "learning_rate")
            )


def test_memory_bench_grid_validates() -> None:
    bench = _bench("memory")
    for workers in (1, 2, 4):
        for stage in (2, 3):
            cfg = bench.workflow(workers, stage, offload=True)
            assert cfg.training.trainable == "all" and cfg.training.zero_stage == stage
            assert cfg.resources.cpus_per_worker * workers == 2


def test_bon_alignment_bench_scores_each_completion_like_a_plain_forward() -> None:
    """bench/bon_alignment.py's log pi(y | x) of a prompt's completions, batched with padding,
    equals each completion's own unpadded forward (the empty one scored as EOS)."""
    bench = _bench("bon_alignment")
    cfg = ModelConfig(name_or_path="builtin:tiny")
    model, tok = load_causal_lm(cfg), load_tokenizer(cfg)
    prompt = "the movie was"
    completions = [tok(" long and slow")["input_ids"], tok(" fine")["input_ids"], []]
    batched = bench.sequence_logprobs(model, tok, prompt, completions, False)
    for got, completion in zip(batched, completions, strict=True):
        completion = completion or [tok.eos_token_id]
        ids = torch.tensor([tok(prompt)["input_ids"] + completion])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        own = logprobs[-len(completion) :].gather(-1, ids[0, -len(completion) :, None]).sum()
        assert float(got) == pytest.approx(float(own), abs=1e-4)
