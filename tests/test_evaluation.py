"""Evaluation: sample-based estimates against exact values in the toy world, and `vbon evaluate`
end to end on the tiny model with a real local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from vbon.core.bon import bon_kl_bound, bon_probs, win_rate_vs_ref
from vbon.core.metrics import gain_recovered, pareto_front
from vbon.evaluation.metrics import bon_row, policy_row, reference_row
from vbon.manifest import MODEL_IDENTITY
from vbon.toy.world import all_sequences, distinct_reward, kl, random_reference, tied_reward

TESTS = Path(__file__).resolve().parent
P, K, M = 400, 4, 16


def _within(est: dict, exact: float, sigmas: float = 3.0) -> bool:
    return abs(est["mean"] - exact) <= sigmas * est["se"]


@pytest.mark.parametrize("reward_kind", ["distinct", "tied"])
def test_policy_estimates_agree_with_exact_values(reward_kind: str) -> None:
    """A policy sampled k times per prompt, against M reference samples per prompt: reward, both
    win rates and both KL estimates land within their intervals of the enumerated truth."""
    ref, policy = random_reference(4, 4, seed=0), random_reference(4, 4, seed=3, scale=0.7)
    reward = distinct_reward(4, 4, seed=1) if reward_kind == "distinct" else tied_reward(0)
    seqs = all_sequences(4, 4)
    p, q, r = ref.probs(), policy.probs(), reward(seqs)
    g = torch.Generator().manual_seed(0)
    ys = policy.sample(P * K, g)
    with torch.no_grad():
        logp = policy.token_logprobs(ys).sum(-1)
        ref_logp = ref.token_logprobs(ys).sum(-1)
    k1 = (logp - ref_logp).view(P, K)
    k3 = (torch.expm1(ref_logp - logp) - (ref_logp - logp)).view(P, K)  # sequence-level k3
    ref_rewards = reward(ref.sample(P * M, g)).view(P, M)
    row = policy_row("pi", reward(ys).view(P, K), k1, k3, ref_rewards, 4, resamples=200)

    win = float(win_rate_vs_ref(q, p, r))
    assert _within(row["reward"], float((q * r).sum()))
    assert _within(row["win_rate"], win)
    assert _within(row["win_rate_first"], win)
    assert _within(row["kl"], kl(q, p))
    assert _within(row["kl_k3"], kl(q, p))
    assert row["win_rate"]["se"] < row["win_rate_first"]["se"]  # M samples: lower variance
    lo, hi = row["reward"]["ci"]
    assert lo < row["reward"]["mean"] < hi
    # against BoN at N=4: P(r(y) > r(BoN)) + half the ties, from pi_BoN's exact reward masses
    q_bon = bon_probs(p, r, 4)
    beats = (r[:, None] > r[None, :]).double() + 0.5 * (r[:, None] == r[None, :]).double()
    assert _within(row["win_rate_vs_bon"], float(q @ beats @ q_bon))


@pytest.mark.parametrize("reward_kind", ["distinct", "tied"])
def test_bon_estimates_from_cached_samples_agree_with_exact_values(reward_kind: str) -> None:
    """BoN's rows from M cached samples per prompt land within their intervals of the enumerated
    pi_BoN; the estimates over every N-subset are several times less noisy than one pick."""
    ref = random_reference(4, 4, seed=0)
    reward = distinct_reward(4, 4, seed=1) if reward_kind == "distinct" else tied_reward(0)
    p, r = ref.probs(), reward(all_sequences(4, 4))
    ref_rewards = reward(ref.sample(P * M, torch.Generator().manual_seed(2))).view(P, M)
    for n in (2, 4, 8):
        row = bon_row(n, ref_rewards, resamples=200)
        q = bon_probs(p, r, n)
        assert _within(row["reward"], float((q * r).sum()))
        assert _within(row["win_rate"], float(win_rate_vs_ref(q, p, r)))
        assert _within(row["win_rate_first"], float(win_rate_vs_ref(q, p, r)))
        assert row["win_rate"]["se"] < 0.5 * row["win_rate_first"]["se"]
        if reward_kind == "distinct":  # the closed form is the continuous limit: KL sits below it
            assert 0 < bon_kl_bound(n) - kl(q, p) < 0.05
    reference = reference_row(ref_rewards, 4, resamples=200)
    assert _within(reference["win_rate"], 0.5) and _within(reference["win_rate_first"], 0.5)
    q4 = bon_probs(p, r, 4)
    assert _within(reference["win_rate_vs_bon"], 1.0 - float(win_rate_vs_ref(q4, p, r)))
    assert reference["kl"]["mean"] == 0.0


def test_pareto_front() -> None:
    kl_values = [0.0, 0.5, 0.4, 1.0, 1.0]
    win = [0.5, 0.6, 0.7, 0.7, 0.8]
    assert pareto_front(kl_values, win) == [True, False, True, False, True]


def _workflow(tmp_path: Path) -> Path:
    raw = {
        "name": "ev",
        "run_dir": str(tmp_path / "runs"),
        "n": 4,
        "m": 8,
        "model": {"name_or_path": "builtin:tiny"},
        "reward": {"kind": "callable", "function": "reward_fns:letter_e_share"},
        "data": {"max_prompts": 30, "test_fraction": 0.3},
        "sampling": {"shard_size": 32, "max_new_tokens": 10},
        "evaluation": {"n_values": [1, 2, 4, 8], "samples_per_prompt": 3, "bootstrap": 100},
        "resources": {"sampling_actors": 2},
    }
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_vbon_evaluate_end_to_end(tmp_path: Path, tiny_path: Path) -> None:
    """The reference's own weights as one policy (its KL must be 0) and a perturbed copy as
    another; BoN rows from the cache; JSON, Markdown and both PNGs written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    noisy = tmp_path / "noisy"
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(noisy)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(noisy)
    made_by = {"training_hash": "noisy", "wall_s": 1.0, "n": 2}  # as `vbon train` writes it
    (noisy / MODEL_IDENTITY).write_text(json.dumps(made_by))

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    wf = _workflow(tmp_path)
    cmd = [sys.executable, "-m", "vbon.cli", "evaluate", str(wf)]
    cmd += ["--policy", f"same={tiny_path}", "--policy", f"noisy={noisy}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout.splitlines()
    assert any(ln.startswith("same ") for ln in shown) and any(
        ln.startswith("BoN N=4") for ln in shown
    )

    out = tmp_path / "runs" / "ev" / "eval-policies"
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert methods == ["reference", "BoN N=2", "BoN N=4", "BoN N=8", "same", "noisy"]
    rows = {r["method"]: r for r in results["rows"]}
    assert rows["same"]["kl"]["mean"] == pytest.approx(0.0, abs=1e-4)
    assert rows["noisy"]["kl"]["mean"] > 0.01 and rows["noisy"]["kl_k3"]["mean"] > 0
    same = rows["same"]  # the reference itself recovers none of BoN's gain
    assert abs(same["gain_recovered"]["mean"]) < 4 * same["gain_recovered"]["se"] + 0.05
    assert abs(same["gap_to_bon_curve"]["mean"]) < 4 * same["win_rate"]["se"] + 0.05
    cost = same["cost"]
    assert cost["request_s_one_sample"] > 0 and cost["request_s_bon_n4"] > 0
    # a policy trained for N = 2 is judged against BoN-2, the workflow's N = 4 notwithstanding
    assert (same["bon_n"], rows["noisy"]["bon_n"]) == (4, 2)
    g, _ = gain_recovered(
        torch.tensor(rows["noisy"]["per_prompt_win_rate"]),
        torch.tensor(rows["BoN N=2"]["per_prompt_win_rate"]),
    )
    assert rows["noisy"]["gain_recovered"]["mean"] == pytest.approx(g)
    assert rows["noisy"]["cost"]["training_s"] == 1.0
    assert rows["noisy"]["cost"]["request_s_bon_n2"] > 0
    assert cost["sampling_s"] > 0 and "break_even_requests" in cost
    assert rows["BoN N=8"]["win_rate"]["mean"] != rows["BoN N=8"]["win_rate"]["mean"]  # N = M
    assert rows["BoN N=4"]["reward"]["mean"] >= rows["BoN N=2"]["reward"]["mean"]
    assert results["num_prompts"] == 9 and len(results["examples"]) == 3
    assert set(results["examples"][0]["completions"]) == {"reference", "BoN N=4", "same", "noisy"}
    for png in ("pareto_win_rate.png", "pareto_reward.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 400 and len(set(im.convert("L").getdata())) > 20
    assert "| noisy |" in (out / "results.md").read_text()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and json.loads((out / "results.json").read_text()) == results

    bad = subprocess.run([*cmd[:5], "--policy", "x"], env=env, capture_output=True, text=True)
    assert (
        bad.returncode == 2
        and bad.stderr.strip().count("\n") == 0
        and "NAME=MODEL_DIR" in bad.stderr
    )
