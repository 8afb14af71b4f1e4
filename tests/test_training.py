"""The training stage: a real local Ray, 2 Ray Train workers, DeepSpeed ZeRO-2 and ZeRO-3 on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from ray_helpers import RAY_ENV, local_ray, wait_for_checkpoint, wait_for_step, worker_pythonpath
from transformers import AutoModelForCausalLM, AutoTokenizer

from vbon.config import ResourcesConfig, TrainingConfig, parse_workflow
from vbon.core.bon import bon_probs
from vbon.core.cdf import empirical_masses
from vbon.core.losses import pair_columns
from vbon.errors import VbonError
from vbon.methods import get_method
from vbon.models.logprobs import forward_logprobs
from vbon.plots import read_steps
from vbon.sampling.stage import run_sampling
from vbon.toy.task import ToyTask
from vbon.toy.train import ToyRun, train_toy
from vbon.toy.world import TabularPolicy, all_sequences, kl
from vbon.training.lm_task import LanguageModelTask
from vbon.training.loop import TrainJob, step_prompts
from vbon.training.stage import fit, run_training

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow
# long enough to interrupt after step 7: about 0.05 s per step under ZeRO-2, 0.25 s under ZeRO-3
STEPS_TO_INTERRUPT = {2: 60, 3: 50}


def _env() -> dict[str, str]:
    return {**RAY_ENV, "PYTHONPATH": worker_pythonpath()}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(tiny_path):
    with local_ray():
        yield


def _raw(**training) -> dict:
    return {
        "name": "t",
        "n": 8,
        "m": 16,
        "model": {"name_or_path": "builtin:tiny"},
        "reward": {"kind": "callable", "function": "reward_fns:letter_e_share"},
        "data": {"max_prompts": 20},
        "sampling": {"shard_size": 32, "max_new_tokens": 12},
        "evaluation": {"n_values": [1, 2]},
        "resources": {"sampling_actors": 2, "train_workers": 2},
        "training": {
            "prompts_per_step": 8,
            "samples_per_prompt": 4,
            "learning_rate": 2e-3,
            "steps": 20,
            "checkpoint_every": 10,
            **training,
        },
    }


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return run_sampling(parse_workflow(_raw()), tmp_path_factory.mktemp("s") / "samples", False)


def _train(samples: Path, out: Path, **training) -> tuple[Path, list[dict]]:
    out = run_training(parse_workflow(_raw(**training)), samples, out)
    return out, read_steps(out / "metrics.jsonl")


def _mean(steps: list[dict], key: str) -> float:
    return sum(s[key] for s in steps) / len(steps)


@pytest.mark.parametrize(
    ("stage", "estimator", "lr"),
    [(2, "rloo", 2e-3), (3, "ppo", 5e-4)],
    ids=["zero2-rloo", "zero3-ppo"],
)
def test_vbon_raises_the_reward_and_exports_a_loadable_model(
    samples: Path, tmp_path: Path, tiny_path: Path, stage: int, estimator: str, lr: float
) -> None:
    # PPO whitens its advantages, so its steps are larger: at RLOO's 2e-3 its KL reached 3.7
    out, steps = _train(
        samples, tmp_path / "train", zero_stage=stage, estimator=estimator, learning_rate=lr
    )
    assert [s["step"] for s in steps] == list(range(1, 21))
    assert _mean(steps[-5:], "reward") > _mean(steps[:5], "reward")
    assert all(s["kl"] >= -0.5 and s["tokens_per_s"] > 0 for s in steps)
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert (out / "training.png").stat().st_size > 10_000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["final_metrics"]["step"] == 20

    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    ids = tok("The film opens", return_tensors="pt")
    text = tok.decode(model.generate(**ids, max_new_tokens=8, do_sample=False)[0])
    assert text.startswith("The film opens") and len(text) > len("The film opens")
    ref = AutoModelForCausalLM.from_pretrained(tiny_path, use_safetensors=True)
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(model.parameters(), ref.parameters(), strict=True)
    ]
    assert max(diffs) > 1e-4  # the fine-tuned weights moved away from the reference

    # Model states per rank: under ZeRO-3 each of the 2 ranks keeps half of the policy's weights
    # and half of the frozen reference's; under ZeRO-2 both whole. The policy starts as the
    # reference, so its first KL is 0 only if the (partitioned) reference computes pi_ref right.
    both = 2 * sum(p.numel() * p.element_size() for p in ref.parameters()) / 2**20
    first = steps[0]
    assert abs(first["kl"]) < 1e-4
    assert first["mem_grads_mib"] > 0 and first["mem_optimizer_mib"] > 0
    if stage == 3:
        assert first["mem_params_mib"] <= 0.55 * both
    else:
        assert first["mem_params_mib"] >= both

    same = _raw(zero_stage=stage, estimator=estimator, learning_rate=lr)
    again = run_training(parse_workflow(same), samples, out)
    assert again == out and read_steps(out / "metrics.jsonl") == steps  # complete: skipped


def test_kl_rl_raises_the_raw_reward(samples: Path, tmp_path: Path) -> None:
    # beta small enough that the KL term does not drown letter-share differences of ~0.05
    _, steps = _train(samples, tmp_path / "klrl", algorithm="kl_rl", beta=0.005)
    assert _mean(steps[-5:], "reward") > _mean(steps[:5], "reward")
    assert all(s["score"] == pytest.approx(s["reward"], abs=1e-6) for s in steps)  # raw reward


def test_vbon_with_a_prefix_baseline_raises_the_reward(samples: Path, tmp_path: Path) -> None:
    # per-token RLOO advantages with the prefix's score as V, also on reference-sample steps
    _, steps = _train(
        samples,
        tmp_path / "prefix",
        estimator="rloo",
        prefix_baseline=True,
        gae_lambda=1.0,
        reference_steps=4,
    )
    assert [s["step"] for s in steps] == list(range(1, 21)) and "ess" in steps[0]
    assert _mean(steps[-5:], "reward") > _mean(steps[4:9], "reward")


def test_the_prefix_baseline_is_the_score_of_every_prefix(samples: Path) -> None:
    raw = _raw(estimator="rloo", prefix_baseline=True)
    task = LanguageModelTask(parse_workflow(raw), str(samples))
    task.setup(torch.device("cpu"))
    task.load_reference()
    policy = task.build_policy(value_head=False)
    method = get_method("vbon")
    batch = task.rollout(policy, [0, 1], 4, 3, False, method)
    assert batch.baseline.shape == batch.mask.shape
    assert (batch.baseline[batch.mask == 0] == 0).all()
    row = task.rows[1]
    ref = torch.tensor([row["rewards"]], dtype=torch.float64)
    ids = batch.input_ids[6, -batch.mask.shape[1] :][batch.mask[6].bool()].tolist()
    texts = [task.tok.decode(ids[:t], skip_special_tokens=True) for t in range(len(ids))]
    rewards = torch.tensor(
        [task.scorer.score([row["prompt"]] * len(ids), texts)], dtype=torch.float64
    )
    expected = method.score(rewards, *empirical_masses(rewards, ref), None, task.cfg.n)[0]
    assert torch.allclose(batch.baseline[6, : len(ids)].double(), expected, atol=1e-6)
    cached = task.reference_rollout([0, 1], 4, 3, method)
    assert cached.from_reference and cached.baseline.shape == cached.mask.shape


@pytest.mark.parametrize("method", ["bon_sft", "bon_distill"])
def test_cached_sample_methods_lower_their_nll(samples: Path, tmp_path: Path, method) -> None:
    _, steps = _train(
        samples, tmp_path / method, algorithm=method, steps=12, zero_stage=3, trainable="lora"
    )
    assert "score" not in steps[0]  # no rollouts: the cached reference samples only
    assert _mean(steps[-3:], "loss") < _mean(steps[:3], "loss")


def test_reference_pairs_are_each_groups_best_and_worst_rows_only(samples: Path) -> None:
    task = LanguageModelTask(parse_workflow(_raw()), str(samples))
    task.setup(torch.device("cpu"))
    task.load_reference()
    method = get_method("bonbon")
    every = task.reference_rollout([0, 1], 16, 3, method)
    pairs = task.reference_rollout([0, 1], 16, 3, method, pairs_of=8)
    assert pairs.group_size == 4 and pairs.input_ids.shape[0] == 8  # 2 groups of 8: 2 pairs
    groups = every.rewards.view(2, 2, 8)
    assert torch.equal(pairs.rewards.view(2, 2, 2)[..., 0], groups.amax(-1))
    assert torch.equal(pairs.rewards.view(2, 2, 2)[..., 1], groups.amin(-1))
    rows = (pair_columns(every.rewards.view(2, 16), 8) + torch.tensor([[0], [16]])).flatten()
    assert torch.equal(pairs.score, every.score[rows])  # scored against the same M - 1 others
    ref_pairs, ref_every = ((b.ref_logprobs * b.mask).sum(-1) for b in (pairs, every))
    assert torch.allclose(ref_pairs, ref_every[rows], atol=1e-4)


def test_bonbon_pulls_each_pairs_log_ratio_margin_towards_its_target(
    samples: Path, tmp_path: Path
) -> None:
    _, steps = _train(samples, tmp_path / "bonbon", algorithm="bonbon", samples_per_prompt=16)
    assert "score" not in steps[0] and steps[0]["target_margin"] > 0  # cached pairs, best first
    assert abs(steps[0]["margin"]) < 0.5  # the policy starts at pi_ref: h = 0
    assert _mean(steps[-3:], "margin") > _mean(steps[:3], "margin") + 1.0
    assert _mean(steps[-3:], "loss") < _mean(steps[:3], "loss")


def test_distill_warm_start_then_jeffreys_with_a_learning_curve(
    samples: Path, tmp_path: Path
) -> None:
    out, steps = _train(
        samples,
        tmp_path / "jeffreys",
        algorithm="jeffreys",
        estimator="rloo",
        distill_steps=3,
        steps=8,
        eval_every=4,
        eval_prompts=4,
    )
    assert [s["step"] for s in steps] == list(range(9))  # step 0: the reference's held-out point
    assert ["score" in s for s in steps[1:]] == [False] * 3 + [True] * 5  # warm start, then mix
    curve = [s for s in steps if "heldout_win_rate" in s]
    assert [s["step"] for s in curve] == [0, 4, 8]
    assert all(0 <= s["heldout_win_rate"] <= 1 for s in curve)
    assert all(0 <= s["heldout_win_rate_se"] <= 0.5 for s in curve)  # over the 4 prompts
    assert 0.5 < curve[0]["heldout_bon_win_rate"] <= 1  # BoN-8 beats the reference
    assert (out / "training.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "model, trained", [("tiny", "transformer.h.1."), ("llama", "model.layers.3.")]
)
def test_top_layers_freezes_the_rest(
    samples: Path, tmp_path: Path, tiny_path: Path, llama_path: Path, model: str, trained: str
) -> None:
    """GPT-2 runs the full forward; the Llama-shaped policy shares the reference's trunk."""
    base = {"tiny": tiny_path, "llama": llama_path}[model]
    raw = _raw(trainable="top_layers", top_layers=1, steps=4) | {
        "model": {"name_or_path": str(base)}
    }
    out = run_training(parse_workflow(raw), samples, tmp_path / "top")
    model = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    ref = AutoModelForCausalLM.from_pretrained(base)
    changed = {
        name
        for (name, a), (_, b) in zip(model.named_parameters(), ref.named_parameters(), strict=True)
        if not torch.equal(a, b)
    }
    assert changed and all(name.startswith(trained) for name in changed)


@pytest.mark.parametrize("model, shared", [("tiny", 0), ("llama", 2)])
def test_the_shared_trunk_gives_the_policy_its_own_logprobs(
    samples: Path, tiny_path: Path, llama_path: Path, model: str, shared: int
) -> None:
    base = {"tiny": tiny_path, "llama": llama_path}[model]
    raw = _raw(trainable="top_layers", top_layers=2) | {"model": {"name_or_path": str(base)}}
    task = LanguageModelTask(parse_workflow(raw), str(samples))
    task.setup(torch.device("cpu"))
    task.load_reference()
    policy = task.build_policy(value_head=True)
    assert policy.top_blocks == shared
    batch = task.rollout(policy, [0, 1], 4, 3, False, get_method("vbon"))
    assert (batch.trunk is not None) == bool(shared)  # collected while the policy generated
    width, temperature = batch.mask.shape[1], task.cfg.sampling.temperature
    ref = forward_logprobs(
        task.reference, batch.input_ids, batch.attention_mask, width, temperature
    )
    assert torch.allclose(batch.ref_logprobs * batch.mask, ref * batch.mask, atol=1e-5)
    logprobs, values, _ = task.forward(policy, batch)
    batch.trunk = None
    full, full_values, _ = task.forward(policy, batch)
    assert torch.allclose(logprobs, full, atol=1e-5)
    assert torch.allclose(values, full_values, atol=1e-5)


def test_killed_worker_is_recovered_from_the_last_checkpoint(samples: Path, tmp_path: Path) -> None:
    """ZeRO-2's checkpoint (ZeRO-3's is resumed by the stopped-run test below)."""
    out, stage = tmp_path / "train", 2
    steps = STEPS_TO_INTERRUPT[stage]
    cfg = parse_workflow(_raw(zero_stage=stage, steps=steps, checkpoint_every=5))
    done: dict = {}
    thread = threading.Thread(
        target=lambda: done.setdefault("out", run_training(cfg, samples, out))
    )
    thread.start()
    wait_for_step(out / "metrics.jsonl", 7)
    wait_for_checkpoint(out)
    os.kill(int((out / "pids" / "rank-1").read_text()), signal.SIGKILL)
    thread.join(timeout=300)
    assert done.get("out") == out.resolve()
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    [resume] = [e for e in events if e.get("event") == "resume"]
    assert resume["step"] % 5 == 0 and resume["step"] >= 5
    assert resume["optimizer_steps"] == resume["step"]  # Adam's state came back with the weights
    assert [s["step"] for s in read_steps(out / "metrics.jsonl")] == list(range(1, steps + 1))


def test_stopped_run_resumes_from_its_checkpoint(samples: Path, tmp_path: Path) -> None:
    """ZeRO-3's partitioned checkpoint, by a new process (ZeRO-2's: the killed-worker test)."""
    stage = 3
    steps = STEPS_TO_INTERRUPT[stage]
    raw = _raw(zero_stage=stage, steps=steps, checkpoint_every=5)
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(yaml.safe_dump({**raw, "run_dir": str(tmp_path / "runs")}))
    (tmp_path / "runs" / "t").mkdir(parents=True)
    os.symlink(samples, tmp_path / "runs" / "t" / "samples")
    env = {**os.environ, **_env()}
    cmd = [sys.executable, "-m", "vbon.cli", "train", str(workflow)]
    out = tmp_path / "runs" / "t" / "train"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_step(out / "metrics.jsonl", 7)
    wait_for_checkpoint(out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted" in err.decode()
    stopped_at = max(s["step"] for s in read_steps(out / "metrics.jsonl"))
    assert stopped_at < steps
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"trained (vBoN (l1), {steps} steps)" in rerun.stdout
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    [resume] = [e for e in events if e.get("event") == "resume"]
    assert 5 <= resume["step"] <= stopped_at and resume["step"] % 5 == 0
    assert resume["optimizer_steps"] == resume["step"]
    assert [s["step"] for s in read_steps(out / "metrics.jsonl")] == list(range(1, steps + 1))


def test_nan_reward_during_training_fails_with_one_line(samples: Path, tmp_path: Path) -> None:
    raw = _raw(max_failures=0)
    raw["reward"] = {"kind": "callable", "function": "reward_fns:always_nan"}
    with pytest.raises(VbonError) as err:
        run_training(parse_workflow(raw), samples, tmp_path / "train")
    message = str(err.value)
    assert message.startswith("training failed: ") and "\n" not in message
    assert "reward nan (not finite) for completion 0 of prompt" in message
    assert "Traceback" not in message


def test_step_prompts_cover_every_prompt_once_per_epoch() -> None:
    seen = [i for step in range(5) for i in step_prompts(10, 4, step, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert step_prompts(10, 4, 2, seed=3) == step_prompts(10, 4, 2, seed=3)


@pytest.mark.parametrize(
    ("levels", "run", "bound", "reference_steps"),
    [
        (None, ToyRun("vbon_exact", n=4, steps=500), 0.01, 0),
        (13, ToyRun("vbon", n=8, m=300, steps=500), 0.05, 250),
        (13, ToyRun("bonbon", n=4, steps=500), 0.01, 0),
    ],
    ids=[
        "distinct-exact-cdf",
        "13-tied-levels-fhat-m300-half-steps-on-reference-samples",
        "13-tied-levels-bonbon-pairs",
    ],
)
def test_toy_world_through_the_distributed_trainer_matches_single_process(
    tmp_path: Path, levels: int | None, run: ToyRun, bound: float, reference_steps: int
) -> None:
    """vBoN in the enumerable toy world: 2 Ray Train workers with DeepSpeed reach the same
    KL(pi || pi_BoN) as the single-process harness, with distinct rewards (on-policy), and with
    heavy ties where the first half of the steps take the objective on reference samples
    (importance-weighted) and the second half on the policy's own, which by then has moved far
    from pi_ref; and BoNBoN on the pairs of heavily tied reference samples. (Ties on-policy
    alone: test_toy_exact.py, single process.)"""
    task = ToyTask(run, levels=levels)
    task.setup(torch.device("cpu"))
    task.load_reference()
    seqs = all_sequences(task.vocab, task.length)
    target = bon_probs(task.ref.probs(), task.reward(seqs), run.n)
    single = kl(train_toy(task.ref, task.reward, run).probs(), target)

    training = TrainingConfig(
        algorithm=run.method,
        estimator="rloo",
        learning_rate=run.lr,
        lr_schedule="cosine",
        max_grad_norm=0.0,
        steps=run.steps,
        prompts_per_step=2,
        samples_per_prompt=run.batch_size // 2,
        zero_stage=2,
        checkpoint_every=run.steps,
        reference_steps=reference_steps,
        eval_every=run.steps,
        bonbon_alpha=run.alpha,
    )
    job = TrainJob(
        training, 1 / (run.n - 1), lambda: ToyTask(run, levels=levels), str(tmp_path / "log")
    )
    final = fit(job, ResourcesConfig(train_workers=2), tmp_path / "store")
    logits = torch.load(final / "model" / "logits.pt").double()
    distributed = kl(TabularPolicy(task.vocab, task.length, logits).probs(), target)
    assert single <= bound and distributed <= bound
    assert abs(distributed - single) <= 0.01
    steps = read_steps(tmp_path / "log" / "metrics.jsonl")
    assert ["ess" in s for s in steps[1:]] == [True] * reference_steps + [False] * (
        run.steps - reference_steps
    )
    start, end = (s for s in steps if "heldout_win_rate" in s)  # exact, so no standard error
    assert start["heldout_win_rate"] == pytest.approx(0.5) and "heldout_win_rate_se" not in end
    gap = abs(end["heldout_win_rate"] - end["heldout_bon_win_rate"])
    assert gap <= (distributed / 2) ** 0.5  # Pinsker: |win rate difference| <= TV
