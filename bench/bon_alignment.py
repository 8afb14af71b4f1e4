"""How much of a trained policy's movement is BoN's reweighting, on held-out cached samples.

pi_BoN reweights the reference by a function of each sample's reward rank alone:
t(y) = log pi_BoN/pi_ref(y) (`core.bon.empirical_bon_log_ratio`, ties included). On each
held-out prompt's M cached reference samples this compares a policy's own log-ratio
h(y) = log pi/pi_ref(y) with t (`core.metrics.log_ratio_alignment`): their correlation (BoN's
is 1; 1 - corr^2 is the share of the policy's movement that BoN's reweighting does not explain,
KL spent on changes that do not track the reward) and the slope of h on t (BoN's is 1: below 1
the policy tilts towards high rewards less steeply than BoN). The slope over corr^2
(`core.metrics.tilt_scale`) splits the shortfall: the KL-optimal tilt along the policy's own
direction has slope corr^2, so a scale of 1 leaves it all to the direction, and below 1 the
optimiser stopped short of it. Also the self-normalised
importance estimate of each one's win rate on the same samples (`core.metrics.reweighted_win_rate`),
and the reference's (h = 0, exactly 0.5) as the baseline. Prints the ratios to BoN's, writes
bench/results/bon_alignment.json and a scatter of h against t, bon_alignment.png.

    python bench/bon_alignment.py --policy runs/quickstart/train/model \
        [--samples runs/quickstart/samples] [--workflow workflows/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vbon.config import load_workflow
from vbon.core.bon import empirical_bon_log_ratio
from vbon.core.metrics import log_ratio_alignment, reweighted_win_rate, tilt_scale
from vbon.models import load_causal_lm, load_tokenizer
from vbon.models.logprobs import encode_completions, forward_logprobs
from vbon.plots import log_ratio_scatter
from vbon.sampling.generate import render_prompt
from vbon.sampling.stage import read_samples

ROOT = Path(__file__).resolve().parent.parent


def sequence_logprobs(model, tok, prompt: str, completions: list[list[int]], chat: bool):
    """log pi(y | x) of each completion of one prompt [M], through the trainer's encoding."""
    rendered = [render_prompt(tok, prompt, chat)] * len(completions)
    completions = [c or [tok.eos_token_id] for c in completions]
    ids, att, mask = encode_completions(tok, rendered, completions, not chat)
    with torch.no_grad():
        return (forward_logprobs(model, ids, att, mask.shape[1], 1.0) * mask).sum(-1).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "quickstart.yaml")
    parser.add_argument("--samples", type=Path, default=Path("runs/quickstart/samples"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    cfg = load_workflow(args.workflow)
    tok = load_tokenizer(cfg.model)
    ref = load_causal_lm(cfg.model)
    policy = load_causal_lm(cfg.model.model_copy(update={"name_or_path": str(args.policy)}))
    rows = read_samples(args.samples, args.split).to_pylist()[: args.prompts]
    m = min(len(r["rewards"]) for r in rows)
    h, rewards = [], []
    for i, row in enumerate(rows):
        ids, chat = row["token_ids"][:m], cfg.data.chat_template
        h.append(
            sequence_logprobs(policy, tok, row["prompt"], ids, chat)
            - sequence_logprobs(ref, tok, row["prompt"], ids, chat)
        )
        rewards.append(torch.tensor(row["rewards"][:m], dtype=torch.float64))
        print(f"\r{i + 1}/{len(rows)} prompts", end="", flush=True)
    print()
    h, rewards = torch.stack(h), torch.stack(rewards)
    t = empirical_bon_log_ratio(rewards, cfg.n)
    corr, slope = log_ratio_alignment(h, t)
    results = {
        "policy": str(args.policy),
        "split": args.split,
        "prompts": len(rows),
        "m": m,
        "n": cfg.n,
        "corr": corr,
        "slope": slope,
        "unexplained_share": 1 - corr**2,
        "tilt_scale": tilt_scale(corr, slope),
        "win_rate_is": {
            "policy": reweighted_win_rate(h, rewards),
            "bon": reweighted_win_rate(t, rewards),
            "reference": reweighted_win_rate(torch.zeros_like(h), rewards),
        },
    }
    wr = results["win_rate_is"]
    print(
        f"policy vs BoN-{cfg.n} on {len(rows)} {args.split} prompts x {m} cached samples: "
        f"corr {corr:.3f} (BoN 1), slope {slope:.3f} (BoN 1), "
        f"{1 - corr**2:.0%} of the policy's log-ratio variance unexplained by BoN's"
    )
    print(
        f"tilt scale slope/corr^2 {results['tilt_scale']:.2f}: 1 is the KL-optimal tilt along "
        f"the policy's own direction, whose slope is corr^2 = {corr**2:.3f}; below 1 the "
        "optimiser under-tilts, at 1 the rest of the shortfall is the direction (corr)"
    )
    print(
        f"importance win rate: policy {wr['policy']:.3f}, BoN {wr['bon']:.3f}, "
        f"reference {wr['reference']:.3f}; gain ratio to BoN "
        f"{(wr['policy'] - wr['reference']) / (wr['bon'] - wr['reference']):.2f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bon_alignment.json").write_text(json.dumps(results, indent=2))
    log_ratio_scatter(h.numpy(), t.numpy(), slope, cfg.n, args.out / "bon_alignment.png")
    print(f"wrote {args.out / 'bon_alignment.json'} and bon_alignment.png")


if __name__ == "__main__":
    main()
