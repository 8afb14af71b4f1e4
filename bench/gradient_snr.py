"""Gradient signal to noise of one training step, at pi = pi_ref, on a run's cached samples.

At initialisation the policy is the reference, so each prompt's M cached reference samples are
on-policy samples: batches of P prompts x k samples drawn from them are batches the trainer
could have drawn. Over B such batches, on the trainable weights (the top blocks),

    SNR = (|mean_b g_b|^2 - noise / B) / noise,   noise = mean_b |g_b - mean g|^2,

for the vBoN step (RLOO on the tie-aware l1 score, F_hat from the prompt's M rewards) at k = 4
(the baseline) and k = 16, and for the BoN-distillation step (forward KL, cached samples drawn by
their BoN-pick weights). Prints each SNR and its ratio to the baseline; writes
bench/results/gradient_snr.json.

    python bench/gradient_snr.py [--samples runs/quickstart/samples] [--workflow ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vbon.config import load_workflow
from vbon.core.bon import bon_pick_probs
from vbon.core.cdf import empirical_masses
from vbon.core.losses import rloo_advantages
from vbon.methods import METHODS
from vbon.models import load_causal_lm, load_tokenizer
from vbon.models.logprobs import append_completions, model_logprobs
from vbon.sampling.stage import read_samples
from vbon.training.lm_task import select_trainable

ROOT = Path(__file__).resolve().parent.parent


def vbon_batch(rows, n: int, g, prompts: int, k: int):
    """k of each prompt's cached samples, weighted by minus their RLOO advantage (the loss)."""
    batch, completions, weights = [], [], []
    for i in torch.randperm(len(rows), generator=g)[:prompts].tolist():
        row = rows[i]
        rewards = torch.tensor(row["rewards"], dtype=torch.float64)
        pick = torch.randperm(len(rewards), generator=g)[:k]
        p_lt, p_le = empirical_masses(rewards[pick][None], rewards[None])
        score = METHODS["vbon"].score(rewards[pick][None], p_lt, p_le, None, n)
        for j, adv in zip(pick.tolist(), rloo_advantages(score)[0].tolist(), strict=True):
            batch.append(row)
            completions.append(row["token_ids"][j])
            weights.append(-adv)
    return batch, completions, torch.tensor(weights)


def distill_batch(rows, n: int, g, prompts: int, k: int):
    """k draws of each prompt's cached samples by their BoN-pick weights (the distill step)."""
    batch, completions, weights = [], [], []
    for i in torch.randperm(len(rows), generator=g)[:prompts].tolist():
        row = rows[i]
        w = bon_pick_probs(torch.tensor([row["rewards"]], dtype=torch.float64), n)[0]
        for j in torch.multinomial(w, k, replacement=True, generator=g).tolist():
            batch.append(row)
            completions.append(row["token_ids"][j])
            weights.append(1.0 / k)
    return batch, completions, torch.tensor(weights)


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
        enc = tok([r["prompt"] for r in batch], return_tensors="pt", padding=True)
        ids, att, mask = append_completions(
            enc["input_ids"], enc["attention_mask"], completions, tok.pad_token_id
        )
        logprob = model_logprobs(lm, ids, att, mask.shape[1], cfg.sampling.temperature)
        loss = -(weights[:, None].float() * logprob * mask).sum() / mask.sum()
        return torch.cat([x.flatten() for x in torch.autograd.grad(loss, params)])

    results = {}
    p = t.prompts_per_step
    for name, make, k in (
        (f"vbon {p}x4", vbon_batch, 4),
        (f"vbon {p}x16", vbon_batch, 16),
        (f"distill {p}x4", distill_batch, 4),
    ):
        start, g = time.perf_counter(), torch.Generator().manual_seed(0)
        grads = torch.stack([gradient(*make(rows, cfg.n, g, p, k)) for _ in range(args.batches)])
        noise = ((grads - grads.mean(0)) ** 2).sum(-1).mean()
        signal = (grads.mean(0) ** 2).sum() - noise / args.batches
        results[name] = {"snr": float(signal / noise), "seconds": time.perf_counter() - start}
    base = results[f"vbon {p}x4"]["snr"]
    for name, r in results.items():
        r["ratio_vs_baseline"] = r["snr"] / base
        print(f"{name:<16} SNR {r['snr']:.4f}  ({r['ratio_vs_baseline']:.2f}x the vBoN {p}x4 step)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient_snr.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out / 'gradient_snr.json'}")


if __name__ == "__main__":
    main()
