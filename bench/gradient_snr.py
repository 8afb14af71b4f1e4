"""Gradient signal to noise of one training step, at pi = pi_ref, on a run's cached samples.

At initialisation the policy is the reference, so each prompt's M cached reference samples are
on-policy samples: batches of P prompts x k samples drawn from them are batches the trainer
could have drawn. Over B such batches, on the trainable weights (the top blocks),

    SNR = (|mean_b g_b|^2 - noise / B) / noise,   noise = mean_b |g_b - mean g|^2,

for the vBoN step (RLOO on the tie-aware l1 score, F_hat from the prompt's M rewards) at k = 4
(the baseline) and k = 16; for the same step at k = 4 with `training.prefix_baseline` (per-token
GAE advantages with the score of each prefix as V, centred per position) at lambda 1, 0.9 and
0.5; and for the BoN-distillation step (forward KL, cached samples drawn by their BoN-pick
weights). All but lambda < 1 estimate the same gradient, so their noise compares directly.
Prints each SNR and noise and the ratio to the baseline; writes bench/results/gradient_snr.json.

    python bench/gradient_snr.py [--samples runs/quickstart/samples] [--workflow ...]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from vbon.config import load_workflow
from vbon.core.bon import bon_pick_probs
from vbon.core.cdf import empirical_masses
from vbon.core.losses import (
    gae_advantages,
    kl_penalized_rewards,
    positional_group_advantages,
    rloo_advantages,
)
from vbon.methods import METHODS
from vbon.models import load_causal_lm, load_tokenizer
from vbon.models.logprobs import encode_completions, model_logprobs
from vbon.rewards import build_scorer
from vbon.sampling.stage import read_samples
from vbon.training.lm_task import prefix_rewards, select_trainable

ROOT = Path(__file__).resolve().parent.parent


def vbon_batch(rows, n: int, g, prompts: int, k: int, prefix=None):
    """k of each prompt's cached samples, weighted per token by minus their advantage (the loss):
    the sequence's RLOO advantage, or with `prefix` = (scorer, tokenizer, lambda) the per-token
    advantages of `training.prefix_baseline`."""
    batch, completions, weights = [], [], []
    for i in torch.randperm(len(rows), generator=g)[:prompts].tolist():
        row = rows[i]
        rewards = torch.tensor(row["rewards"], dtype=torch.float64)
        pick = torch.randperm(len(rewards), generator=g)[:k]
        ids = [row["token_ids"][j] for j in pick.tolist()]
        score = l1_score(rewards[pick][None], rewards[None], n)[0]
        width = max(1, *(len(c) for c in ids))
        mask = (torch.arange(width) < torch.tensor([len(c) for c in ids])[:, None]).double()
        if prefix is None:
            adv = rloo_advantages(score[None])[0][:, None] * mask
        else:
            scorer, tok, lam = prefix
            phi = prefix_rewards(scorer, tok, [row["prompt"]] * k, ids, width)
            phi = l1_score(phi.flatten()[None], rewards[None], n).view_as(phi) * mask
            last = kl_penalized_rewards(score, torch.zeros_like(mask), mask, 0.0)
            returns = gae_advantages(last, phi, mask, 1.0, lam)[0]
            adv = positional_group_advantages(returns[None], mask[None])[0]
        batch += [row] * k
        completions += ids
        weights += [-a[: len(c)] for a, c in zip(adv, ids, strict=True)]
    return batch, completions, weights


def l1_score(rewards: torch.Tensor, ref: torch.Tensor, n: int) -> torch.Tensor:
    """vBoN's tie-aware l1 score of rewards [1, K] against one prompt's reference rewards [1, M]."""
    p_lt, p_le = empirical_masses(rewards, ref)
    return METHODS["vbon"].score(rewards, p_lt, p_le, None, n)


def distill_batch(rows, n: int, g, prompts: int, k: int):
    """k draws of each prompt's cached samples by their BoN-pick weights (the distill step)."""
    batch, completions, weights = [], [], []
    for i in torch.randperm(len(rows), generator=g)[:prompts].tolist():
        row = rows[i]
        w = bon_pick_probs(torch.tensor([row["rewards"]], dtype=torch.float64), n)[0]
        for j in torch.multinomial(w, k, replacement=True, generator=g).tolist():
            batch.append(row)
            completions.append(row["token_ids"][j])
            weights.append(torch.full((len(completions[-1]),), 1.0 / k))
    return batch, completions, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "quickstart.yaml")
    parser.add_argument("--samples", type=Path, default=Path("runs/quickstart/samples"))
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    cfg = load_workflow(args.workflow)
    t = cfg.training
    rows = read_samples(args.samples, "train").to_pylist()
    tok = load_tokenizer(cfg.model)
    lm = select_trainable(load_causal_lm(cfg.model), t.trainable, t.top_layers, t.lora_rank)
    params = [p for p in lm.parameters() if p.requires_grad]

    def gradient(batch, completions, weights) -> torch.Tensor:
        ids, att, mask = encode_completions(tok, [r["prompt"] for r in batch], completions, True)
        per_token = torch.nn.utils.rnn.pad_sequence(weights, batch_first=True).float()
        logprob = model_logprobs(lm, ids, att, mask.shape[1], cfg.sampling.temperature)
        loss = -(per_token * logprob * mask).sum() / mask.sum()
        return torch.cat([x.flatten() for x in torch.autograd.grad(loss, params)])

    results = {}
    p = t.prompts_per_step
    scorer = build_scorer(cfg.reward)
    for name, make, k in (
        (f"vbon {p}x4", vbon_batch, 4),
        (f"vbon {p}x16", vbon_batch, 16),
        *(
            (f"vbon {p}x4 prefix lambda={lam:g}", partial(vbon_batch, prefix=(scorer, tok, lam)), 4)
            for lam in (1.0, 0.9, 0.5)
        ),
        (f"distill {p}x4", distill_batch, 4),
    ):
        start, g = time.perf_counter(), torch.Generator().manual_seed(0)
        grads = torch.stack([gradient(*make(rows, cfg.n, g, p, k)) for _ in range(args.batches)])
        noise = ((grads - grads.mean(0)) ** 2).sum(-1).mean()
        signal = (grads.mean(0) ** 2).sum() - noise / args.batches
        results[name] = {
            "snr": float(signal / noise),
            "noise": float(noise),
            "seconds": time.perf_counter() - start,
        }
    base = results[f"vbon {p}x4"]
    for name, r in results.items():
        r["ratio_vs_baseline"] = r["snr"] / base["snr"]
        r["noise_vs_baseline"] = r["noise"] / base["noise"]
        print(
            f"{name:<28} SNR {r['snr']:.4f} ({r['ratio_vs_baseline']:.2f}x)  noise {r['noise']:.4f}"
            f" ({r['noise_vs_baseline']:.2f}x the vBoN {p}x4 step)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient_snr.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out / 'gradient_snr.json'}")


if __name__ == "__main__":
    main()
