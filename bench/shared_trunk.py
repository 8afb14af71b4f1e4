"""The shared frozen trunk under top-layer training, against the full forward, in one process.

One worker's training work on a batch of a run's cached samples (P prompts x k samples, the
quickstart's 4 x 8 per worker): the reference forward, then the policy's forward and backward.
With the shared trunk the reference forward also hands over the hidden state below the top
blocks and the policy runs only those; without it the policy runs all its blocks. The two
alternate, `--reps` times each, on one thread (a worker's share of a 2-core machine). Prints
seconds per phase and the ratio full / shared; writes bench/results/shared_trunk.json.

    python bench/shared_trunk.py [--samples runs/quickstart/samples] [--workflow ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vbon.config import load_workflow
from vbon.methods import get_method
from vbon.training.lm_task import LanguageModelTask

ROOT = Path(__file__).resolve().parent.parent


def timed(task: LanguageModelTask, policy, prompts: list[int], k: int, shared: bool) -> dict:
    """Seconds of the reference forward, the policy forward and its backward on one batch."""
    task.top_blocks = policy.top_blocks = task.cfg.training.top_layers if shared else 0
    t0 = time.perf_counter()
    batch = task.reference_rollout(prompts, k, 0, get_method("vbon"))
    t1 = time.perf_counter()
    logprobs = task.forward(policy, batch)[0]
    t2 = time.perf_counter()
    (logprobs * batch.mask).sum().backward()
    t3 = time.perf_counter()
    policy.zero_grad()
    return {"reference": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "total": t3 - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workflow", default=str(ROOT / "workflows/quickstart.yaml"))
    p.add_argument("--samples", default=str(ROOT / "runs/quickstart/samples"))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench/results/shared_trunk.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_workflow(args.workflow)
    task = LanguageModelTask(cfg, args.samples)
    task.setup(torch.device("cpu"))
    task.load_reference()
    policy = task.build_policy(value_head=False)
    if not policy.top_blocks:
        raise SystemExit(f"{cfg.model.name_or_path}: this model cannot share its trunk")
    prompts = list(range(args.prompts))
    timed(task, policy, prompts, args.k, True)  # warm-up
    runs: dict[str, list[dict]] = {"full": [], "shared": []}
    for _ in range(args.reps):
        for mode in runs:
            runs[mode].append(timed(task, policy, prompts, args.k, mode == "shared"))
    mean = {m: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for m, rs in runs.items()}
    ratio = mean["full"]["total"] / mean["shared"]["total"]
    for m, phases in mean.items():
        print(f"{m:>6}: " + "  ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    print(f"full / shared: {ratio:.2f}x ({args.prompts * args.k} rows, one thread)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = {"model": cfg.model.name_or_path, "rows": args.prompts * args.k, "mean_s": mean}
    Path(args.out).write_text(json.dumps(record | {"speedup": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
