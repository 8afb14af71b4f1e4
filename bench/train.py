"""Training throughput: seconds per step, tokens per second and peak memory per worker, for 1 and
2 Ray Train workers under DeepSpeed ZeRO-2 and ZeRO-3, on the tiny model (all weights) and on
SmolLM2-135M-Instruct (top 2 layers).

The global batch is the same for 1 and 2 workers (2 workers each take half the prompts), so the
scaling ratio is tokens/s with 2 workers over tokens/s with 1. The first `--warmup` steps of
each run are left out of the averages. Each run's step is also split into its phases (the
trainer's `time_*` metrics: generation, reward scoring, reference forward, policy forward,
backward with DeepSpeed's gradient reduction, optimizer step). Prints a table and writes
bench/results/train.json and the breakdown as bench/results/train_breakdown.png.

    python bench/train.py [--models builtin:tiny builtin:smollm2-135m-instruct] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from vbon.config import ResourcesConfig, parse_workflow
from vbon.plots import read_steps, stacked_bars
from vbon.ray_runtime import ray_session
from vbon.sampling.stage import run_sampling
from vbon.training.stage import run_training

TRAINABLE = {"builtin:tiny": "all", "builtin:smollm2-135m-instruct": "top_layers"}
PHASES = ["generate", "reward", "reference", "forward", "backward", "optimizer"]


def workflow(model: str, workers: int, stage: int, steps: int):
    return parse_workflow(
        {
            "n": 4,
            "m": 8,
            "model": {"name_or_path": model},
            "data": {"max_prompts": 32},
            "sampling": {"max_new_tokens": 16, "shard_size": 32},
            "resources": {"sampling_actors": 2, "train_workers": workers},
            "training": {
                "estimator": "rloo",
                "samples_per_prompt": 4,
                "prompts_per_step": 4,
                "steps": steps,
                "checkpoint_every": steps,
                "zero_stage": stage,
                "trainable": TRAINABLE.get(model, "top_layers"),
                "top_layers": 2,
            },
        }
    )


def time_run(model: str, workers: int, stage: int, steps: int, warmup: int, tmp: Path) -> dict:
    cfg = workflow(model, workers, stage, steps)
    samples = run_sampling(cfg, tmp / "samples", progress=False)
    out = run_training(cfg, samples, tmp / f"train-w{workers}-z{stage}")
    timed = read_steps(out / "metrics.jsonl")[warmup:]
    step_s = sum(s["step_s"] for s in timed) / len(timed)
    return {
        "model": model,
        "workers": workers,
        "zero_stage": stage,
        "step_s": step_s,
        "tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["step_s"] for s in timed),
        "peak_mem_mib_per_worker": max(s["peak_mem_mib"] for s in timed),
        "phases_s": {p: sum(s.get(f"time_{p}", 0.0) for s in timed) / len(timed) for p in PHASES},
    }


def breakdown_png(rows: list[dict], png: Path) -> None:
    """One stacked bar per run: seconds per step in each phase, the rest as "other"."""
    labels = [f"{r['model'].split(':')[-1][:8]}\n{r['workers']}w Z{r['zero_stage']}" for r in rows]
    parts = {p: [r["phases_s"][p] for r in rows] for p in PHASES}
    parts["other"] = [r["step_s"] - sum(r["phases_s"].values()) for r in rows]
    stacked_bars(labels, parts, "seconds per step", "where a training step's time goes", png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["builtin:tiny", "builtin:smollm2-135m-instruct"]
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with ray_session(ResourcesConfig(), verbose=False):
        rows, ratios = [], []
        for model in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                for stage in (2, 3):
                    one, two = (
                        time_run(model, w, stage, args.steps, args.warmup, Path(tmp))
                        for w in (1, 2)
                    )
                    rows += [one, two]
                    ratio = two["tokens_per_s"] / one["tokens_per_s"]
                    ratios.append({"model": model, "zero_stage": stage, "scaling_2_vs_1": ratio})
    print(f"\n{'model':<32} {'workers':>7} {'ZeRO':>4} {'s/step':>7} {'tok/s':>8} {'peak MiB':>9}")
    for r in rows:
        print(
            f"{r['model']:<32} {r['workers']:>7} {r['zero_stage']:>4} {r['step_s']:>7.3f} "
            f"{r['tokens_per_s']:>8.1f} {r['peak_mem_mib_per_worker']:>9.0f}"
        )
    for r in ratios:
        print(
            f"scaling 2 vs 1 worker, {r['model']}, ZeRO-{r['zero_stage']}: {r['scaling_2_vs_1']:.2f}x"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps({"runs": rows, "scaling": ratios}, indent=2))
    breakdown_png(rows, args.out / "train_breakdown.png")
    print(f"wrote {args.out / 'train.json'} and {args.out / 'train_breakdown.png'}")


if __name__ == "__main__":
    main()
